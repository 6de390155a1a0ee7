"""``bone-zoo list``: the registered backbones and ensemble combiners (built-in and plugins), and the recipes."""

from __future__ import annotations

import argparse


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="bone-zoo list", description=__doc__)
    p.add_argument("pattern", nargs="*", help="wildcards over backbone names ('regnet*'); default all")
    return p


def main(args: argparse.Namespace) -> int:
    from zoo.combiners import describe_combiners
    from zoo.recipes import describe_recipes
    from zoo.registry import describe_backbones

    print(describe_backbones(args.pattern or None))
    print(f"\nensemble combiners: {describe_combiners()}")
    print(f"\ntraining recipes (train_all.py --recipe): {describe_recipes()}")
    return 0
