"""``bone-zoo evaluate RUN --data DIR``: the research-grade evaluation of a run on a labelled test split.

  bone-zoo evaluate weights --data DIR
  bone-zoo evaluate weights --data ../shared/data/fracatlas-hand --strata DIR/metadata.csv \\
      --annotations DIR/annotations.coco.json --road-samples 16

Writes into RUN/evaluation/ (or --report-dir): predictions.csv, report.md (every AUC with its DeLong 95% interval,
kappa / sensitivity / specificity / ECE with bootstrap intervals, the paired DeLong test of the ensemble against
each member in words, subgroups, localisation against the annotations with ROAD), metrics.csv, strata.csv,
localisation.csv, localisation_images.csv, roc.png, reliability.png and localisation.png. It is
``predict.py --evaluate --models RUN`` with the same flags.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from zoo.cli import predict


def get_args_parser(add_help: bool = True) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, add_help=add_help, parents=[predict.get_args_parser(False)],
                                formatter_class=argparse.RawDescriptionHelpFormatter, conflict_handler="resolve")
    p.add_argument("run", help="run folder (or one member folder) to evaluate; its members form the ensemble")
    p.add_argument("--output", "-output", dest="output", default=None,
                   help="predictions CSV (default: predictions.csv in the report folder)")
    p.set_defaults(evaluate=True)
    return p


def main(args: argparse.Namespace) -> int:
    """``predict.main`` on a copy of ``args`` with the run as the members and the report folder filled in."""
    report_dir = Path(args.report_dir) if args.report_dir else Path(args.run) / "evaluation"
    report_dir.mkdir(parents=True, exist_ok=True)
    return predict.main(argparse.Namespace(**{
        **vars(args), "evaluate": True, "models": args.models or [args.run],
        "weights": args.run if args.weights == "weights" else args.weights, "report_dir": str(report_dir),
        "output": args.output or str(report_dir / "predictions.csv")}))
