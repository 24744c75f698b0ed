"""Options and argument types shared by several `wavflow` commands."""

from __future__ import annotations

import argparse
from pathlib import Path

RECIPE_HELP = "recipe TOML file (see recipes/); omitted keys take their defaults"
SET_HELP = "override a recipe value, e.g. --set train.lr=3e-4 (repeatable; values are TOML)"


def add_recipe_options(command: argparse.ArgumentParser, required: bool = True) -> None:
    command.add_argument("--recipe", type=Path, required=required, help=RECIPE_HELP)
    command.add_argument(
        "--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE", help=SET_HELP
    )


def chunk_size(text: str) -> str:
    """Checks a --stream-chunk value: a positive frame count or seconds with an s."""
    try:
        positive = (float(text[:-1]) if text.endswith("s") else int(text)) > 0
    except ValueError:
        positive = False
    if not positive:
        raise argparse.ArgumentTypeError(f"{text!r}: give frames (10) or seconds (0.05s)")
    return text


def chunk_sizes(text: str) -> list[str]:
    """Checks a comma-separated --stream-chunks list (see `chunk_size`)."""
    return [chunk_size(chunk) for chunk in text.split(",")]
