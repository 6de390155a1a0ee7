"""``bone-zoo COMMAND ...``: the installed command line (``python -m zoo`` is the same).

  bone-zoo train   --data DIR [--models 'regnet*' ...]     train a zoo (= python train_all.py)
  bone-zoo predict --data DIR -output preds.csv            study-level CSV from an ensemble (= python predict.py)
  bone-zoo evaluate RUN --data DIR [--annotations ...]     report with intervals, paired tests, subgroups, CAMs vs boxes
  bone-zoo demo    [--weights DIR | --hub ORG/NAME]        the Gradio demo with Grad-CAM
  bone-zoo push    RUN ORG/NAME                            upload a run to the Hugging Face Hub
  bone-zoo export  RUN --onnx [--int8 ...]                 ONNX graphs for --backend onnx / onnx-int8
  bone-zoo list    ['regnet*']                             registered backbones and combiners
  bone-zoo space   ORG/NAME --models hf://ORG/RUN          a Hugging Face Space serving the demo
"""

from __future__ import annotations

import difflib
import importlib
import sys

COMMANDS = {"train": "zoo.cli.train", "predict": "zoo.cli.predict", "evaluate": "zoo.cli.evaluate",
            "demo": "demo.cli", "push": "zoo.cli.push",
            "export": "zoo.cli.export", "list": "zoo.cli.listing", "space": "zoo.cli.space"}


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(__doc__)
        return 0 if argv else 2
    command, rest = argv[0], argv[1:]
    if command not in COMMANDS:
        close = difflib.get_close_matches(command, list(COMMANDS), n=1)
        hint = f" Did you mean `bone-zoo {close[0]}`?" if close else ""
        print(f"error: unknown command {command!r}.{hint} Commands: {', '.join(COMMANDS)}", file=sys.stderr)
        return 2
    module = importlib.import_module(COMMANDS[command])
    parser = module.get_args_parser()
    parser.prog = f"bone-zoo {command}"
    return int(module.main(parser.parse_args(rest)) or 0)
