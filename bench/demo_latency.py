"""Demo latency: one X-ray through the Gradio app over HTTP (gradio_client), with Grad-CAMs from every member.

  python bench/demo_latency.py                       # 3 regnet_x_800mf members at 512 px, 20 requests
  python bench/demo_latency.py --precision fp32      # the same in fp32

Members are untrained (latency does not depend on the weights), saved as member folders and served by the real
demo app on a free local port; the client uploads one FracAtlas image per request (a synthetic one without
../shared). Prints p50/p95/max over the requests after one warm-up, and the in-process analyse() time.
"""

from __future__ import annotations

import argparse
import os
import socket
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data" / "fracatlas-hand"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--members", type=int, default=3)
    p.add_argument("--backbone", default="regnet_x_800mf")
    p.add_argument("--size", type=int, default=512)
    p.add_argument("--requests", type=int, default=20)
    p.add_argument("--precision", default="auto", help="members' inference precision (default %(default)s)")
    p.add_argument("--method", default="Grad-CAM")
    args = p.parse_args()

    import torch
    from gradio_client import Client, handle_file

    from demo.app import MemberPool, analyse, build_demo
    from zoo.model import BoneClassifier
    from zoo.runtime import machine_summary, tune_allocator

    tune_allocator()
    work = Path(tempfile.mkdtemp(prefix="bone-zoo-demo-bench-"))
    names = []
    for i in range(args.members):
        torch.manual_seed(i)
        names.append(f"{args.backbone}-{i}")
        BoneClassifier(args.backbone, img_size=args.size).save_member(work / "run" / names[-1])
    if DATA.is_dir():
        image = str(sorted((DATA / "test").iterdir())[0])
    else:
        from zoo.data import SyntheticSpec, ensure_synthetic

        image = str(sorted((ensure_synthetic(work / "syn", SyntheticSpec(n_train=8, n_test=2)) / "test").iterdir())[0])
    pool = MemberPool.from_source(work / "run", precision=args.precision)
    t0 = time.perf_counter()
    analyse([image], names, args.method, pool)  # loads the members
    first = time.perf_counter() - t0
    inproc = []
    for _ in range(3):
        t0 = time.perf_counter()
        analyse([image], names, args.method, pool)
        inproc.append(time.perf_counter() - t0)
    app = build_demo(pool, examples=False)
    port = _free_port()
    app.launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True)
    try:
        client = Client(f"http://127.0.0.1:{port}/", verbose=False)
        client.predict([handle_file(image)], names, args.method, api_name="/analyse")  # warm-up
        times = []
        for _ in range(args.requests):
            t0 = time.perf_counter()
            client.predict([handle_file(image)], names, args.method, api_name="/analyse")
            times.append(time.perf_counter() - t0)
    finally:
        app.close()
    times.sort()
    p95 = times[min(len(times) - 1, round(0.95 * (len(times) - 1)))]
    print(f"machine: {machine_summary()}")
    print(f"{args.members} x {args.backbone} at {args.size} px, {args.method}, precision {args.precision}, image "
          f"{Path(image).name}")
    print(f"in-process analyse(): first {first:.2f}s (loads members), then median {statistics.median(inproc):.2f}s")
    print(f"HTTP (gradio_client), {len(times)} requests: p50 {statistics.median(times):.2f}s  p95 {p95:.2f}s  "
          f"max {times[-1]:.2f}s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
