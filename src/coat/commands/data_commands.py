"""``coat data pack``: an image folder as WebDataset shards (timm's layout, with the class names)."""

from __future__ import annotations

import argparse
from pathlib import Path


def add_parsers(subparsers: argparse._SubParsersAction) -> None:
    from ..data.shards import DEFAULT_SHARD_SIZE

    data = subparsers.add_parser("data", help="prepare training data (shards for large runs)")
    actions = data.add_subparsers(dest="action", required=True, metavar="ACTION")
    pack = actions.add_parser(
        "pack",
        help="write FOLDER/train and FOLDER/val (class folders) as tar shards with _info.json; train with "
        "--data wds:OUT",
    )
    pack.add_argument("folder", type=Path, help="image folder with train/<class>/* and val/<class>/*")
    pack.add_argument("out", type=Path, help="new folder for the shards")
    pack.add_argument("--shard-size", type=int, default=DEFAULT_SHARD_SIZE, help="images per shard")
    pack.set_defaults(func=run_pack)


def run_pack(args: argparse.Namespace) -> int:
    from ..data.shards import pack_folder

    info = pack_folder(args.folder, args.out, args.shard_size)
    counts = ", ".join(
        f"{name} {len(s['filenames'])} shards / {s['num_samples']} images" for name, s in info["splits"].items()
    )
    print(f"wrote {args.out}: {counts}, {len(info['class_names'])} classes; train with --data wds:{args.out}")
    return 0
