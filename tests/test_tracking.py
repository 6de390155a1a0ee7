"""--log-with: each member one tracked run (TensorBoard, a local MLflow store) with its config, per-epoch metrics and
the leaderboard; nothing logged or imported without the flag."""

import json
import os
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest
from conftest import ROOT

from zoo import tracking
from zoo.config import TrainConfig

pytestmark = pytest.mark.slow
MEMBERS = ["resnet10t", "regnetx_002"]
TINY = ["--synthetic-studies", "40", "--img-size", "32", "--epochs", "2", "--head-hidden", "16", "--quiet"]
TRACKER_MODULES = ("tensorboard", "torch.utils.tensorboard", "mlflow", "wandb")


def _train(cwd: Path, *extra: str, env: dict | None = None) -> subprocess.CompletedProcess:
    """train_all.py's main() on a small synthetic set, in a fresh interpreter; prints the tracker modules it loaded."""
    code = ("import json, sys, train_all\n"
            f"rc = train_all.main(train_all.get_args_parser().parse_args({[*TINY, *extra]!r}))\n"
            f"print('MODULES', json.dumps([m for m in {TRACKER_MODULES!r} if m in sys.modules]))\n"
            "sys.exit(rc)\n")
    return subprocess.run([sys.executable, "-c", code], cwd=cwd, capture_output=True, text=True, timeout=900,
                          env={**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", **(env or {})})


def _modules(proc: subprocess.CompletedProcess) -> list[str]:
    return json.loads(next(ln for ln in proc.stdout.splitlines() if ln.startswith("MODULES "))[8:])


def test_without_the_flag_accelerate_gets_no_tracker(monkeypatch):
    import accelerate

    from zoo.train import make_accelerator

    seen = {}
    real = accelerate.Accelerator

    def spy(*args, **kwargs):
        seen.update(kwargs)
        return real(*args, **kwargs)

    monkeypatch.setattr(accelerate, "Accelerator", spy)
    acc = make_accelerator(TrainConfig(device="cpu", mixed_precision="no"))
    assert "log_with" in seen and seen["log_with"] is None
    assert acc.log_with == [] and acc.trackers == []


def test_an_unknown_or_missing_tracker_is_refused_before_training(monkeypatch):
    with pytest.raises(ValueError, match="not a tracker"):
        tracking.resolve(["tensorbored"])
    monkeypatch.setattr(tracking, "_installed", lambda name: name != "wandb")
    with pytest.raises(ValueError, match="wandb: not installed; pip install wandb"):
        tracking.resolve(["tensorboard", "wandb"])
    assert tracking.resolve(["all"]) == ["tensorboard", "mlflow"]  # all = the installed ones
    assert tracking.resolve(None) is None and tracking.resolve([]) is None


def test_mlflow_logs_to_the_users_server_else_a_sqlite_file_in_the_project_dir(monkeypatch, tmp_path):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    assert tracking.mlflow_uri(tmp_path) == f"sqlite:///{tmp_path.resolve() / 'mlflow.db'}"
    monkeypatch.setattr(tracking, "_installed", lambda name: True)
    monkeypatch.setattr(tracking, "_has_sqlalchemy", lambda: False)  # mlflow-skinny: no local store
    with pytest.raises(ValueError, match="needs SQLAlchemy.*pip install mlflow, or set MLFLOW_TRACKING_URI"):
        tracking.accelerator_kwargs(["mlflow"], str(tmp_path))
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://mlflow.example:5000")
    assert tracking.mlflow_uri(tmp_path) == "http://mlflow.example:5000"
    assert tracking.accelerator_kwargs(["mlflow"], str(tmp_path))["log_with"] == ["mlflow"]  # the server's store


def test_tracking_fields_are_how_it_ran_not_what_was_trained():
    from zoo.checkpoint import fingerprint

    cfg = TrainConfig()
    tracked = replace(cfg, log_with=["tensorboard"], project_dir="elsewhere")
    assert fingerprint(cfg, {}) == fingerprint(tracked, {})  # --resume with or without --log-with


def test_training_without_the_flag_logs_nothing_and_imports_no_tracker(tmp_path):
    proc = _train(tmp_path, "--models", MEMBERS[0], "--epochs", "1", "--out", str(tmp_path / "w"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert _modules(proc) == []
    assert not (tmp_path / "runs").exists()


def test_tensorboard_and_mlflow_runs_read_back(tmp_path, monkeypatch):
    pytest.importorskip("tensorboard")
    mlflow = pytest.importorskip("mlflow")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    store = (tmp_path / "mlruns").as_uri()  # a local MLflow file store, as a team's MLFLOW_TRACKING_URI would be
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")  # MLflow 3 keeps file stores behind this switch
    proc = _train(tmp_path, "--models", *MEMBERS, "--out", str(tmp_path / "zoo-a"), "--log-with", "tensorboard",
                  "mlflow", "--project-dir", str(tmp_path / "track"),
                  env={"MLFLOW_TRACKING_URI": store})
    assert proc.returncode == 0, proc.stderr[-3000:]
    logs = {m: [json.loads(line) for line in (tmp_path / "zoo-a" / m / "metrics.jsonl").read_text().splitlines()]
            for m in MEMBERS}

    # TensorBoard: one run per member under the zoo run's folder, every epoch's metrics at step = epoch
    for m in MEMBERS:
        ea = EventAccumulator(str(tmp_path / "track" / "tensorboard" / "zoo-a" / m / tracking.PROJECT))
        ea.Reload()
        tags = set(ea.Tags()["scalars"])
        assert {"train_loss", "val_auc", "val_kappa", "val_ece", "lr", "images_per_s", "final/val_auc"} <= tags
        auc = ea.Scalars("val_auc")
        assert [e.step for e in auc] == [1, 2]
        assert [e.value for e in auc] == pytest.approx([r["val_auc"] for r in logs[m]], abs=1e-6)
        assert [e.value for e in ea.Scalars("lr")] == pytest.approx([r["lr"] for r in logs[m]])
        assert all(e.value > 0 for e in ea.Scalars("images_per_s"))
    board = EventAccumulator(str(tmp_path / "track" / "tensorboard" / "zoo-a" / "leaderboard" / tracking.PROJECT))
    board.Reload()
    assert {f"{m}/val_auc" for m in MEMBERS} <= set(board.Tags()["scalars"])

    # MLflow: one run per member, tagged with the zoo run; params are the resolved config
    client = mlflow.tracking.MlflowClient(tracking_uri=store)
    exp = client.get_experiment_by_name(tracking.PROJECT)
    runs = {r.data.tags["mlflow.runName"]: r for r in client.search_runs([exp.experiment_id])}
    assert set(runs) == {*MEMBERS, "leaderboard"}
    assert {r.data.tags["zoo_run"] for r in runs.values()} == {"zoo-a"}
    assert all(r.info.status == "FINISHED" for r in runs.values())
    for m in MEMBERS:
        run = runs[m]
        assert run.data.params["backbone"] == m and float(run.data.params["lr"]) == pytest.approx(1e-3)
        assert run.data.params["img_size"] == "32" and run.data.params["recipe"] == "seed"
        hist = client.get_metric_history(run.info.run_id, "val_auc")
        assert sorted((h.step, round(h.value, 6)) for h in hist) == [
            (r["epoch"], round(r["val_auc"], 6)) for r in logs[m]]
        final = json.loads((tmp_path / "zoo-a" / m / "metrics.json").read_text())
        assert run.data.metrics["final/val_auc"] == pytest.approx(final["val_auc"])
    artifacts = [a.path for a in client.list_artifacts(runs["leaderboard"].info.run_id)]
    assert "leaderboard.md" in artifacts
    assert _modules(proc)  # the trackers asked for were loaded
