"""Study-level predictions from an ensemble: ``python predict.py --data DIR -output preds.csv``.

A thin wrapper with the same flags as ``bone-zoo predict`` (the code is in zoo/cli/predict.py).
"""

import sys

from zoo.cli.predict import get_args_parser, main, write_report

__all__ = ["get_args_parser", "main", "write_report"]

if __name__ == "__main__":
    sys.exit(main(get_args_parser().parse_args()))
