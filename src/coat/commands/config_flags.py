"""Command-line flags generated from a run configuration dataclass (``coat train``, ``coat detect train``)."""

from __future__ import annotations

import argparse
import dataclasses
from typing import Any


def add_config_flags(parser: argparse.ArgumentParser, config_class: type, help_texts: dict[str, str]) -> None:
    """``--config FILE.yaml`` plus one flag per field; ``None`` defaults so only given flags override the recipe."""
    parser.add_argument("--config", help="YAML file of options (flags given here win)")
    for field in dataclasses.fields(config_class):
        flag = "--" + field.name.replace("_", "-")
        help_text = f"{help_texts.get(field.name, '')} (default: {field.default}, unless the recipe sets it)".strip()
        type_name = str(field.type)  # annotations are strings here: "int", "float | None", "tuple[...]"
        if type_name in ("bool", "bool | None"):
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, default=None, help=help_text)
        elif type_name.startswith("tuple[int"):
            parser.add_argument(flag, type=int, nargs="+", default=None, help=help_text)
        elif type_name.startswith("tuple"):  # tuple[float, float, float] (RGB) takes 3 values, tuple[float, ...] any
            count = type_name.count("float") if "..." not in type_name else "+"
            parser.add_argument(flag, type=float, nargs=count, default=None, help=help_text)
        else:
            value_type = float if "float" in type_name else int if "int" in type_name else str
            parser.add_argument(flag, type=value_type, default=None, help=help_text)


def given_flags(args: argparse.Namespace, config_class: type) -> dict[str, Any]:
    return {f.name: getattr(args, f.name) for f in dataclasses.fields(config_class)}
