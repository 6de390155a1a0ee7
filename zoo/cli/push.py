"""``bone-zoo push RUN ORG/NAME``: upload a run folder to the Hugging Face Hub (one repo, a folder per member)."""

from __future__ import annotations

import argparse
import sys


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="bone-zoo push", description=__doc__)
    p.add_argument("run_dir", help="run folder written by bone-zoo train (e.g. weights/)")
    p.add_argument("repo_id", help="ORG/NAME of the model repo (created if missing)")
    p.add_argument("--private", action="store_true", help="create the repo private")
    p.add_argument("--revision", default=None, help="branch to push to (created if missing; default main)")
    p.add_argument("--token", default=None, help="Hub token (default: HF_TOKEN or `hf auth login`)")
    p.add_argument("--message", default=None, help="commit message")
    return p


def main(args: argparse.Namespace) -> int:
    from zoo.hub import push_run

    try:
        url = push_run(args.run_dir, args.repo_id, private=args.private or None, revision=args.revision,
                       token=args.token, commit_message=args.message)
    except FileNotFoundError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"pushed {args.run_dir} to {args.repo_id}: {url}")
    return 0
