"""Calling a library function with a sub-command's parsed options, matched by name."""

from __future__ import annotations

import argparse
import inspect
from collections.abc import Callable
from typing import TypeVar

Result = TypeVar("Result")
# what the parser itself sets on every namespace: the command's name, its handler, the extras it needs
PARSER_FIELDS = frozenset({"command", "action", "func", "extras"})


def call_with_options(function: Callable[..., Result], args: argparse.Namespace) -> Result:
    """``function(**options)``: each option of ``args`` passed as the parameter of the same name.

    An option the function has no parameter for is a bug (a renamed parameter would otherwise be dropped
    and its default used silently), so it raises ``TypeError``.
    """
    options = {name: value for name, value in vars(args).items() if name not in PARSER_FIELDS}
    parameters = inspect.signature(function).parameters
    unknown = sorted(set(options) - set(parameters))
    if unknown:
        raise TypeError(f"{function.__name__} has no parameters {unknown} for the options of `coat {args.command}`")
    return function(**options)
