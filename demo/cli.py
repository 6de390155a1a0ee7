"""``bone-zoo demo`` / ``python -m demo``: its command line, without importing Gradio until it serves."""

from __future__ import annotations

import argparse
import os

DESCRIPTION = """Gradio demo: pick ensemble members, upload the X-rays of one study, see probabilities, the triage
verdict and Grad-CAM heatmaps.

  bone-zoo demo                      # members under weights/
  bone-zoo demo --hub ORG/NAME       # members downloaded (and cached) from the Hugging Face Hub
  bone-zoo demo --annotations FILE.coco.json   # ground-truth boxes over the CAMs of the uploads it names
"""


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="bone-zoo demo", description=DESCRIPTION,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--weights", default="weights", help="run folder with member sub-folders (default %(default)s)")
    p.add_argument("--hub", default=None, metavar="ORG/NAME", help="load the members of a Hub repo instead")
    p.add_argument("--annotations", default=None, metavar="FILE.coco.json",
                   help="COCO boxes: drawn over the CAMs of an upload whose file name an annotated image has, with "
                   "the pointing game per member (default: BONE_ZOO_ANNOTATIONS, else none)")
    p.add_argument("--host", default=None, help="address to serve on (default: GRADIO_SERVER_NAME, else 127.0.0.1)")
    p.add_argument("--port", type=int, default=None, help="port (default: GRADIO_SERVER_PORT, else 7860)")
    p.add_argument("--share", action="store_true", help="a public gradio.live link (needs internet)")
    return p


def main(args: argparse.Namespace) -> None:
    from demo.app import MAX_FILE_MB, MemberPool, build_demo  # Gradio: only when serving

    pool = MemberPool.from_source(args.weights, args.hub,
                                  annotations=args.annotations or os.environ.get("BONE_ZOO_ANNOTATIONS"))
    try:
        coco = pool.coco  # read once, now: a wrong file stops the demo before it serves
    except (OSError, ValueError, ImportError) as exc:
        raise SystemExit(f"error: {exc}") from None
    if coco is not None:
        print(f"ground-truth boxes for {len(coco.dataset.get('images', []))} image(s) from {pool.annotations}")
    if not pool.folders:
        print(f"warning: no members in {args.hub or args.weights}; train some with `python train_all.py`")
    build_demo(pool).launch(server_name=args.host, server_port=args.port, share=args.share,
                            max_file_size=f"{MAX_FILE_MB}mb")
