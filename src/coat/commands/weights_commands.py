"""`coat download`: fetch released weights into the cache (on a login node, for offline compute nodes)."""

from __future__ import annotations

import argparse
import os

from ..download import CACHE_VARIABLE, fetch
from ..errors import UsageError
from ..weights import WEIGHTS, get_weights


def add_parsers(subparsers: argparse._SubParsersAction) -> None:
    download = subparsers.add_parser(
        "download", help="fetch released weights into the cache (then COAT_OFFLINE=1 works without network)"
    )
    download.add_argument(
        "names",
        nargs="*",
        metavar="NAME",
        help="weights names (VARIANT.in1k, VARIANT.authors) or variants (their default weights)",
    )
    download.add_argument(
        "--to",
        metavar="DIR",
        help=f"cache folder to fill (default: ${CACHE_VARIABLE} or the Hugging Face and torch.hub caches)",
    )
    download.add_argument("--list", action="store_true", help="list the released weights and exit")
    download.set_defaults(func=run_download)


def run_download(args: argparse.Namespace) -> int:
    if args.list:
        print(f"{'weights':<32}{'top-1':>7}{'top-5':>7}  {'input':<11}source")
        for w in WEIGHTS.values():
            top5 = f"{w.metrics['top5']:.1f}" if w.metrics.get("top5") else "-"
            size = f"{w.preprocessing.input_size}/{w.preprocessing.crop_pct}"
            print(f"{w.name:<32}{w.metrics['top1']:>7.1f}{top5:>7}  {size:<11}{w.url}")
        return 0
    if not args.names:
        raise UsageError("name the weights to fetch (e.g. `coat download coat_lite_small`), or pass --list")
    chosen = [get_weights(name) for name in args.names]  # all names checked before any download
    if args.to:
        os.environ[CACHE_VARIABLE] = os.path.abspath(args.to)
    for weights in chosen:
        print(f"{weights.name}: {fetch(weights)}", flush=True)
    if args.to:
        print(f"on machines without network, set {CACHE_VARIABLE}={os.environ[CACHE_VARIABLE]} and COAT_OFFLINE=1")
    return 0
