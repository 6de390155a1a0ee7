"""Robustness bench: the bad-input matrix through every entry point, many concurrent demo users, memory over many
requests. Writes bench/robustness.md (and prints it):

  python bench/robustness.py                   # the whole thing, ~10 minutes on 2 CPU cores
  python bench/robustness.py --requests 50     # fewer sequential requests for the memory curve

The cases are the tests' (tests/badinputs.py, tests/test_robustness.py); the tests assert them, this bench records
what a user sees (message, exit code) and the numbers (latency, errors, memory).
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import threading
import time
import warnings
from datetime import date
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pandas as pd  # noqa: E402
from badinputs import IMAGE_CASES  # noqa: E402


def first_line(text: str) -> str:
    lines = [ln.strip() for ln in text.splitlines() if ln.strip().startswith(("error", "warning", "note", "[",
                                                                               "skipped", "/"))]
    msg = next((ln for ln in lines if ln.startswith(("error", "note")) or "skipped" in ln or "refused" in ln), "")
    return (msg or (lines[0] if lines else "")).replace("|", "\\|")[:160]


def run(cmd: list[str], cwd: Path) -> tuple[int, str]:
    p = subprocess.run([sys.executable, *cmd], cwd=cwd, capture_output=True, text=True, timeout=900)
    return p.returncode, p.stderr + p.stdout


def trained_members(work: Path) -> tuple[Path, Path]:
    from zoo.data import SyntheticSpec, ensure_synthetic

    data = ensure_synthetic(work / "synthetic", SyntheticSpec(n_train=120, n_test=20))
    weights = work / "weights"
    if not (weights / "resnet10t" / "metrics.json").is_file():
        code, out = run([str(ROOT / "train_all.py"), "--data", str(data), "--models", "resnet10t", "regnetx_002",
                         "--epochs", "1", "--img-size", "64", "--recipe", "seed", "--no-pretrained", "--out",
                         str(weights), "--quiet"], work)
        assert code == 0, out[-2000:]
    return data, weights


def image_matrix(work: Path, data: Path, weights: Path) -> list[dict]:
    from demo.app import AnalysisError, MemberPool, analyse

    bad = work / "bad"
    shutil.rmtree(bad, ignore_errors=True)
    bad.mkdir()
    pool = MemberPool.from_source(weights)
    rows = []
    for case, (writer, expect) in IMAGE_CASES.items():
        path = writer(bad)
        root = work / "case"
        shutil.rmtree(root, ignore_errors=True)
        shutil.copytree(data, root)
        shutil.copy(path, root / "test")
        out = work / "case.csv"
        out.unlink(missing_ok=True)
        code, text = run([str(ROOT / "predict.py"), "--data", str(root), "--models", str(weights), "-output",
                          str(out), "--quiet"], work)
        said = next((ln.strip() for ln in text.splitlines() if path.name in ln), "(read)")
        rows.append({"case": case, "entry point": "predict.py", "expected": expect, "exit": code,
                     "message": said[:160].replace("|", "\\|"), "traceback": "Traceback" in text})
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            try:
                a = analyse([str(path)], list(pool.folders), "Grad-CAM", pool)
                msg, code = f"P(abnormal) = {a.probability:.3f}", 0
            except AnalysisError as exc:
                msg, code = str(exc), "AnalysisError"
        rows.append({"case": case, "entry point": "demo analyse()", "expected": expect, "exit": code,
                     "message": msg[:160].replace("|", "\\|"), "traceback": False})
    return rows


def folder_matrix(work: Path, data: Path, weights: Path) -> list[dict]:
    from test_robustness import FOLDER_CASES, MEMBER_CASES, _mini

    rows = []
    for case, (mutate, expect, _) in FOLDER_CASES.items():
        root = work / "fcase"
        shutil.rmtree(root, ignore_errors=True)
        _mini(root, data)
        mutate(root)
        for script, extra in (("predict.py", ["--models", str(weights), "-output", str(work / "f.csv")]),
                              ("train_all.py", ["--models", "resnet10t", "--epochs", "1", "--img-size", "32",
                                                "--recipe", "seed", "--no-pretrained", "--out", str(work / "fw")])):
            shutil.rmtree(work / "fw", ignore_errors=True)
            code, text = run([str(ROOT / script), "--data", str(root), *extra, "--quiet"], work)
            rows.append({"case": case, "entry point": script, "expected": expect, "exit": code,
                         "message": first_line(text), "traceback": "Traceback" in text})
    for case, (mutate, says) in MEMBER_CASES.items():
        run_dir = work / "mcase"
        shutil.rmtree(run_dir, ignore_errors=True)
        shutil.copytree(weights / "resnet10t", run_dir / "resnet10t")
        mutate(run_dir / "resnet10t", work / "PICKLE_RAN")
        code, text = run([str(ROOT / "predict.py"), "--data", str(data), "--models", str(run_dir), "-output",
                          str(work / "m.csv"), "--quiet"], work)
        rows.append({"case": case, "entry point": "predict.py", "expected": "refused" if says else "read",
                     "exit": code, "message": first_line(text) if says else "(loads the safetensors only)",
                     "traceback": "Traceback" in text or (work / "PICKLE_RAN").exists()})
    return rows


def concurrency(weights: Path, data: Path, users: int, per_user: int, requests: int) -> tuple[dict, list[tuple]]:
    import psutil
    from gradio_client import Client, handle_file

    from demo.app import MemberPool, build_demo

    pool = MemberPool.from_source(weights)
    app = build_demo(pool, examples=False)
    app.launch(server_name="127.0.0.1", server_port=7931, prevent_thread_lock=True, quiet=True)
    url = "http://127.0.0.1:7931/"
    good = sorted((data / "test").glob("*_image1.*"))[:5]
    bad_dir = Path(os.environ.get("TMPDIR", "/tmp")) / "bone-zoo-bench-bad"
    bad_dir.mkdir(exist_ok=True)
    bad = [IMAGE_CASES["text renamed .png"][0](bad_dir), IMAGE_CASES["zero-byte"][0](bad_dir)]
    names = list(pool.folders)
    lat: list[float] = []  # good uploads answered with a probability
    bad_ok: list[str] = []  # bad uploads answered with their message
    errors: list[str] = []  # anything else: a failed good request, or a bad one without its message
    lock = threading.Lock()

    def user(i: int) -> None:
        client = Client(url, verbose=False)
        for j in range(per_user):
            is_bad = (i + j) % 3 == 0
            f = bad[j % 2] if is_bad else good[(i + j) % len(good)]
            t0 = time.perf_counter()
            try:
                md, *_ = client.predict([handle_file(str(f))], names, "Grad-CAM", api_name="/analyse")
                ok, msg = not is_bad and "P(abnormal)" in md, "a bad upload got a result"
            except Exception as exc:
                ok, msg = is_bad and "Could not read" in str(exc), str(exc)[:120]
            with lock:
                if not ok:
                    errors.append(msg)
                elif is_bad:
                    bad_ok.append(msg)
                else:
                    lat.append(time.perf_counter() - t0)

    threads = [threading.Thread(target=user, args=(i,)) for i in range(users)]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    timed = sorted(lat)
    conc = {"users": users, "requests": users * per_user, "good answered": len(timed),
            "bad with their message": len(bad_ok), "errors": len(errors),
            "p50 s": statistics.median(timed) if timed else float("nan"),
            "p95 s": timed[int(0.95 * (len(timed) - 1))] if timed else float("nan"), "wall s": wall,
            "first error": errors[0] if errors else ""}
    client = Client(url, verbose=False)
    proc = psutil.Process()
    mem = []
    for k in range(requests):
        client.predict([handle_file(str(good[k % len(good)]))], names, "Grad-CAM", api_name="/analyse")
        if k % max(1, requests // 10) == 0 or k == requests - 1:
            mem.append((k + 1, proc.memory_info().rss / 2**20))
    app.close()
    return conc, mem


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--work", default=str(ROOT / "bench" / "out" / "robustness"))
    p.add_argument("--users", type=int, default=10)
    p.add_argument("--per-user", type=int, default=6)
    p.add_argument("--requests", type=int, default=200)
    p.add_argument("--skip-matrix", action="store_true")
    args = p.parse_args()
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    data, weights = trained_members(work)
    lines = [f"# Robustness bench\n\n`python bench/robustness.py` ({date.today()}, 2-core CPU, members: resnet10t + "
             "regnetx_002 at 64 px). `exit` is the process exit code (0 = ran; 2 = a user error, nothing useful "
             "could be done) or, for the demo, the exception the UI shows as a message.\n"]
    if not args.skip_matrix:
        matrix = pd.DataFrame(image_matrix(work, data, weights) + folder_matrix(work, data, weights))
        lines += ["## Bad-input matrix\n", matrix.to_markdown(index=False), "",
                  f"Tracebacks shown to the user: {int(matrix['traceback'].sum())} of {len(matrix)} runs.\n"]
    conc, mem = concurrency(weights, data, args.users, args.per_user, args.requests)
    lines += ["## Many users (gradio_client against the served demo, queue max 16, one analysis at a time)\n",
              pd.DataFrame([conc]).to_markdown(index=False, floatfmt=".2f"), "",
              f"## Memory over {args.requests} sequential requests (RSS of the serving process)\n",
              pd.DataFrame(mem, columns=["requests", "RSS MiB"]).to_markdown(index=False, floatfmt=".0f"), "",
              f"Growth from request {mem[1][0] if len(mem) > 1 else 1} to {mem[-1][0]}: "
              f"{mem[-1][1] - mem[min(1, len(mem) - 1)][1]:+.0f} MiB.\n"]
    text = "\n".join(lines)
    (ROOT / "bench" / "robustness.md").write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
