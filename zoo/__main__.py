"""``python -m zoo``: small commands around runs (push to the Hub, list backbones)."""

from __future__ import annotations

import argparse
import sys


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m zoo", description=__doc__)
    sub = p.add_subparsers(dest="command", required=True)
    push = sub.add_parser("push", help="push a run folder to the Hugging Face Hub (one repo, a folder per member)")
    push.add_argument("run_dir", help="run folder written by train_all.py (e.g. weights/)")
    push.add_argument("repo_id", help="ORG/NAME of the model repo (created if missing)")
    push.add_argument("--private", action="store_true", help="create the repo private")
    push.add_argument("--revision", default=None, help="branch to push to (created if missing; default main)")
    push.add_argument("--token", default=None, help="Hub token (default: HF_TOKEN or `hf auth login`)")
    push.add_argument("--message", default=None, help="commit message")
    sub.add_parser("list", help="list the registered backbones")
    return p


def main(args: argparse.Namespace) -> int:
    if args.command == "list":
        from zoo.registry import describe_backbones

        print(describe_backbones())
        return 0
    from zoo.hub import push_run

    try:
        url = push_run(args.run_dir, args.repo_id, private=args.private or None, revision=args.revision,
                       token=args.token, commit_message=args.message)
    except FileNotFoundError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"pushed {args.run_dir} to {args.repo_id}: {url}")
    return 0


if __name__ == "__main__":
    sys.exit(main(get_args_parser().parse_args()))
