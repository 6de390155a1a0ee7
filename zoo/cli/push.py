"""``bone-zoo push RUN ORG/NAME``: upload a run folder to the Hugging Face Hub (one repo, a folder per member).

Private by default; validation predictions go up with pseudonymous study ids (a salted hash whose salt stays in
RUN/.study-id-salt), config.json without local paths, and nothing a symlink points to outside the run. The local run
folder is only read.
"""

from __future__ import annotations

import argparse
import sys


def add_privacy_flags(p: argparse.ArgumentParser, prefix: str = "") -> None:
    """--public / --private / --include-study-ids, shared by `bone-zoo push` and `train_all.py --push-to-hub`."""
    vis = p.add_mutually_exclusive_group()
    vis.add_argument("--public", action="store_true", help=f"{prefix}create (or push to) a PUBLIC repo; default: "
                     "private, and an existing public repo is refused")
    vis.add_argument("--private", action="store_true", help=f"{prefix}a private repo (the default; kept for old "
                     "scripts)")
    p.add_argument("--include-study-ids", action="store_true", help=f"{prefix}push val_predictions.csv and "
                   "calibration_predictions.csv with the real study ids (MURA patient numbers, accession numbers). "
                   "Default: each id replaced by a salted hash (the salt stays in the run folder), "
                   "which is all the ensemble calibration and triage need")


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="bone-zoo push", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run_dir", help="run folder written by bone-zoo train (e.g. weights/)")
    p.add_argument("repo_id", help="ORG/NAME of the model repo (created if missing)")
    add_privacy_flags(p)
    p.add_argument("--revision", default=None, help="branch to push to (created if missing; default main)")
    p.add_argument("--token", default=None, help="Hub token (default: HF_TOKEN or `hf auth login`)")
    p.add_argument("--message", default=None, help="commit message")
    return p


def main(args: argparse.Namespace) -> int:
    from zoo.hub import PushError, PushOptions, push_run

    options = PushOptions(private=not args.public, revision=args.revision, token=args.token,
                          commit_message=args.message, include_study_ids=args.include_study_ids)
    try:
        url = push_run(args.run_dir, args.repo_id, options, say=lambda m: print(m, file=sys.stderr))
    except (FileNotFoundError, PushError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"pushed {args.run_dir} to {args.repo_id} ({'public' if args.public else 'private'}): {url}")
    return 0
