"""``bone-zoo space ORG/NAME --models hf://ORG/RUN``: write (and with --push, upload) a Hugging Face Space that
serves the Gradio demo with those members."""

from __future__ import annotations

import argparse
from pathlib import Path


def get_args_parser() -> argparse.ArgumentParser:
    from zoo.space import DEFAULT_REQUIREMENT

    p = argparse.ArgumentParser(prog="bone-zoo space", description=__doc__)
    p.add_argument("repo_id", help="ORG/NAME of the Space")
    p.add_argument("--models", nargs="+", required=True, metavar="SPEC",
                   help="members the Space serves: hf://ORG/RUN (a run repo), hf://ORG/RUN/member, or folders")
    p.add_argument("--out", default=None, help="folder to write the Space into (default: space-<NAME>/)")
    p.add_argument("--requirement", default=DEFAULT_REQUIREMENT, help="how the Space installs bone-zoo "
                   "(default %(default)s)")
    p.add_argument("--push", action="store_true", help="create the Space and upload it (token from HF_TOKEN, "
                   "`hf auth login` or --token)")
    vis = p.add_mutually_exclusive_group()
    vis.add_argument("--private", action="store_true", help="with --push: a private Space (the default; an existing "
                     "public Space is refused)")
    vis.add_argument("--public", action="store_true", help="with --push: a public Space (default: private)")
    p.add_argument("--token", default=None, help="Hub token")
    return p


def main(args: argparse.Namespace) -> int:
    import sys

    from zoo.hub import PushError
    from zoo.space import push_space, write_space

    out = Path(args.out or f"space-{args.repo_id.split('/')[-1]}")
    write_space(out, args.repo_id, args.models, args.requirement)
    print(f"wrote {out}/app.py, requirements.txt, README.md (run it locally: cd {out} && python app.py)")
    if args.push:
        try:
            url = push_space(out, args.repo_id, private=not args.public, token=args.token)
        except PushError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
        print(f"pushed the Space {args.repo_id}: {url}")
    return 0
