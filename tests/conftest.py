"""Shared fixtures: a small synthetic dataset and one tiny trained run, built once per session."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")  # tests never touch the network (ImageNet weights: random init)
os.environ.setdefault("BONE_ZOO_EXAMPLES", "0")  # the module-level demo is not given examples in tests
os.environ.setdefault("BONE_ZOO_WEIGHTS", str(Path(tempfile.gettempdir()) / "bone-zoo-no-weights"))
os.environ["BONE_ZOO_CACHE"] = tempfile.mkdtemp(prefix="bone-zoo-cache-")

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = ROOT.parent / "shared" / "data" / "fracatlas-hand"
REFERENCE_CSV = ROOT.parent / "shared" / "reference" / "train.csv"
TINY = ["regnetx_002", "resnet10t"]  # the two tiny backbones of the end-to-end runs
RUN_SIZE = 96  # px of the end-to-end run: at 64 px regnetx_002 ends on a 2x2 map and learns only for lucky seeds


IN_PROCESS = {"predict.py": "predict"}  # scripts whose main() tests call in this process (no torch re-import)


def run_script(script: str, *args: str, cwd: Path, env: dict | None = None, timeout: int = 600,
               subprocess_run: bool = False):
    """Run one of the repo's CLIs as a user would; returns CompletedProcess (text).

    ``predict.py`` runs in process through ``zoo.cli.main`` (same argv, cwd, stdout/stderr, exit code, warnings
    printed to stderr) unless ``env`` changes the environment (libraries read it at import) or ``subprocess_run``
    asks for a real process (the one smoke test per command). Training always runs in its own process.
    """
    if script in IN_PROCESS and env is None and not subprocess_run:
        return _run_in_process(IN_PROCESS[script], [str(a) for a in args], cwd)
    return subprocess.run([sys.executable, str(ROOT / script), *map(str, args)], cwd=cwd, capture_output=True,
                          text=True, timeout=timeout, env={**os.environ, **(env or {})})


def _run_in_process(command: str, argv: list[str], cwd: Path) -> subprocess.CompletedProcess:
    import contextlib
    import io
    import traceback
    import warnings

    from zoo.cli import main

    out, err = io.StringIO(), io.StringIO()
    old = os.getcwd()
    os.chdir(cwd)
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err), warnings.catch_warnings():
            warnings.simplefilter("always")  # as a fresh process would show them (no once-per-location memory)
            warnings.showwarning = lambda m, c, f, n, *_: err.write(warnings.formatwarning(m, c, f, n))
            try:
                code = main([command, *argv])
            except SystemExit as exc:  # argparse errors
                code = exc.code if isinstance(exc.code, int) else 1
            except Exception:  # an uncaught error: what the interpreter would print, exit 1
                traceback.print_exc(file=err)
                code = 1
    finally:
        os.chdir(old)
    return subprocess.CompletedProcess([command, *argv], code, out.getvalue(), err.getvalue())


def bench_module(name: str):
    """bench/NAME.py as a module (bench/ is not a package), loaded from its file."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(f"bench_{name}", ROOT / "bench" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def free_port() -> int:
    """A loopback port nothing listens on, for a demo served in a test."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def pool(trained_run):
    """The demo's member pool over the shared trained run (a test file may define its own ``pool``)."""
    from demo.app import MemberPool

    assert trained_run["proc"].returncode == 0
    return MemberPool.from_source(trained_run["out"])


@pytest.fixture(scope="session")
def synthetic_root(tmp_path_factory) -> Path:
    from zoo.data import SyntheticSpec, ensure_synthetic

    return ensure_synthetic(tmp_path_factory.mktemp("data") / "synthetic", SyntheticSpec(n_test=40))


@pytest.fixture(scope="session")
def trained_run(tmp_path_factory, synthetic_root) -> dict:
    """train_all.py on the synthetic set: 2 tiny backbones, 2 epochs, RUN_SIZE px (the end-to-end run of the spine)."""
    out = tmp_path_factory.mktemp("run") / "weights"
    t0 = time.perf_counter()
    proc = run_script("train_all.py", "--data", synthetic_root, "--models", *TINY, "--epochs", "2", "--recipe", "seed",
                      "--img-size", RUN_SIZE, "--lr", "1e-3", "--out", out, "--quiet", cwd=out.parent)
    return {"out": out, "proc": proc, "seconds": time.perf_counter() - t0, "data": synthetic_root}
