"""Train a zoo: ``python train_all.py [--data DIR] [--models ...]``.

A thin wrapper with the same flags as ``bone-zoo train`` (the code is in zoo/cli/train.py).
"""

import sys

from zoo.cli.train import config_for, get_args_parser, main

__all__ = ["config_for", "get_args_parser", "main"]

if __name__ == "__main__":
    sys.exit(main(get_args_parser().parse_args()))
