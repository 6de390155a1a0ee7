"""Experiment tracking (``--log-with``) through Accelerate's trackers: TensorBoard, MLflow, Weights & Biases.

Each member is one run named after the member, grouped by the zoo run (the name of the run folder, ``--out``):

- TensorBoard: ``PROJECT_DIR/tensorboard/<zoo run>/<member>/bone-zoo/`` (``tensorboard --logdir PROJECT_DIR/
  tensorboard`` shows every zoo run, its members side by side);
- MLflow: experiment ``bone-zoo`` (``MLFLOW_EXPERIMENT_NAME`` overrides it, as Accelerate reads it), run name = the
  member, tags ``zoo_run``, ``member``, ``backbone``. The store is ``MLFLOW_TRACKING_URI`` when set (a team's
  server), else MLflow's own default backend, an SQLite file, in ``PROJECT_DIR/mlflow.db``;
- Weights & Biases: project ``bone-zoo``, run name = the member, group = the zoo run (``WANDB_MODE=offline`` works
  as wandb documents it).

Every run gets the member's resolved config as hyperparameters, per epoch the row of ``metrics.jsonl`` (training
loss, validation AUC, kappa, ECE, learning rate, images/s; with ``--boxes``, the BCE and the box term apart) at
step = epoch, and at its end the member's final metrics (``final/...``). After the zoo, one more run,
``leaderboard``, holds the leaderboard.

Nothing here imports a tracker library: without ``--log-with`` the Accelerator gets ``log_with=None`` and nothing is
logged or imported (tests/test_tracking.py checks ``sys.modules``).
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any

TRACKERS = ("tensorboard", "mlflow", "wandb")
LOG_WITH = (*TRACKERS, "all")  # the choices of --log-with; all = every one of TRACKERS that is installed
PROJECT = "bone-zoo"  # Accelerate's project name: TensorBoard's last folder, MLflow's experiment, W&B's project
DEFAULT_PROJECT_DIR = "runs"  # --project-dir when not given (TensorBoard's own default folder name)
_PACKAGES = {"tensorboard": "tensorboard", "mlflow": "mlflow", "wandb": "wandb"}


def _installed(name: str) -> bool:
    from accelerate.utils import is_mlflow_available, is_tensorboard_available, is_wandb_available

    return {"tensorboard": is_tensorboard_available, "mlflow": is_mlflow_available,
            "wandb": is_wandb_available}[name]()


def resolve(log_with: list[str] | str | None) -> list[str] | None:
    """The trackers ``--log-with`` asks for (``all``: every installed one of :data:`TRACKERS`); None for none.
    A tracker asked for by name that is not installed is an error saying what to install."""
    if not log_with:
        return None
    asked = [log_with] if isinstance(log_with, str) else list(log_with)
    if bad := [n for n in asked if n not in LOG_WITH]:
        raise ValueError(f"--log-with {' '.join(bad)}: not a tracker; choose from {', '.join(LOG_WITH)}")
    if "all" in asked:
        found = [n for n in TRACKERS if _installed(n)]
        if not found:
            raise ValueError("--log-with all: none of tensorboard, mlflow, wandb is installed; "
                             "pip install 'bone-zoo[track]' (TensorBoard and MLflow)")
        return found
    missing = [n for n in dict.fromkeys(asked) if not _installed(n)]
    if missing:
        raise ValueError(f"--log-with {' '.join(missing)}: not installed; pip install "
                         f"{' '.join(_PACKAGES[n] for n in missing)} (or 'bone-zoo[track]' for TensorBoard and MLflow)")
    return list(dict.fromkeys(asked))


def accelerator_kwargs(log_with: list[str] | str | None, project_dir: str | None) -> dict[str, Any]:
    """What ``accelerate.Accelerator`` is given for tracking: ``log_with=None`` without ``--log-with``."""
    trackers = resolve(log_with)
    if trackers is None:
        return {"log_with": None}
    if "mlflow" in trackers and not os.environ.get("MLFLOW_TRACKING_URI") and not _has_sqlalchemy():
        raise ValueError("--log-with mlflow: its local store (an SQLite file in --project-dir) needs SQLAlchemy, "
                         "which mlflow-skinny lacks; pip install mlflow, or set MLFLOW_TRACKING_URI to your server")
    return {"log_with": trackers, "project_dir": str(Path(project_dir or DEFAULT_PROJECT_DIR).resolve())}


def _has_sqlalchemy() -> bool:
    import importlib.util

    return importlib.util.find_spec("sqlalchemy") is not None


def mlflow_uri(project_dir: str | Path) -> str:
    """Where MLflow logs: ``MLFLOW_TRACKING_URI`` when set, else an SQLite file in ``project_dir`` (MLflow's own
    default backend, kept with the run's other logs instead of the working folder)."""
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{Path(project_dir).resolve() / 'mlflow.db'}"


def _param(v: Any) -> bool | int | float | str:
    """A hyperparameter as every tracker takes it (TensorBoard's hparams take only scalars and strings)."""
    if isinstance(v, (bool, int, float, str)):
        return v
    return "none" if v is None else ",".join(map(str, v)) if isinstance(v, (list, tuple)) else str(v)


def start(acc, member_dir: str | Path, hparams: dict[str, Any], backbone: str = "") -> None:
    """Open the run of one member (every process calls it; the trackers act on the main process only)."""
    if not acc.log_with:
        return
    finish(acc)  # a member that failed left its run open
    member_dir = Path(member_dir)
    zoo_run, member = member_dir.parent.name, member_dir.name
    project = Path(acc.project_dir)
    acc.project_configuration.logging_dir = str(project / "tensorboard" / zoo_run / member)
    mlflow_kwargs = {}
    if "mlflow" in acc.log_with and acc.is_main_process:
        import mlflow

        mlflow.set_tracking_uri(mlflow_uri(project))
        if not os.environ.get("MLFLOW_TRACKING_URI"):  # the local store keeps its artifacts beside it
            mlflow_kwargs["logging_dir"] = str(project / "mlartifacts")
    tags = {"zoo_run": zoo_run, "member": member, "backbone": backbone or member}
    acc.init_trackers(PROJECT, config={k: _param(v) for k, v in hparams.items()}, init_kwargs={
        "mlflow": {"run_name": member, "tags": tags, **mlflow_kwargs},
        "wandb": {"name": member, "group": zoo_run, "tags": [zoo_run, tags["backbone"]], "dir": str(project)},
    })


def log(acc, values: dict[str, Any], step: int | None = None) -> None:
    """Numbers to the open run; strings, None, booleans and infinities are left out."""
    if not acc.trackers:
        return
    acc.log({k: float(v) for k, v in values.items() if isinstance(v, (int, float)) and not isinstance(v, bool)
             and not math.isinf(v)}, step=step)


def finish(acc, final: dict[str, Any] | None = None) -> None:
    """Close the open run, after logging ``final`` (the member's final metrics) as ``final/<name>``.

    Not ``accelerator.end_training()``: that also destroys the process group, which the next member of a DDP zoo
    still needs. The trackers' own ``finish`` is what it would call for them.
    """
    if not acc.trackers:
        return
    if final:
        log(acc, {f"final/{k}": v for k, v in final.items()})
    for tracker in acc.trackers:
        tracker.finish()
    acc.trackers = []


def log_leaderboard(acc, run_dir: str | Path, board) -> None:
    """The zoo's leaderboard as one more run, ``leaderboard``, in the zoo run's group: each member's numbers as
    ``<member>/<column>``, the table as text (TensorBoard), the file ``leaderboard.md`` (MLflow artifact) and a table
    (W&B)."""
    if not acc.log_with:
        return
    if board is None or board.empty:  # no finished member: close what a failed one left open
        finish(acc)
        return
    run_dir = Path(run_dir)
    start(acc, run_dir / "leaderboard", {"members": len(board), "zoo_run": run_dir.name})
    name_col = "backbone" if "backbone" in board.columns else board.columns[0]
    numbers = board.set_index(name_col).select_dtypes("number")
    log(acc, {f"{member}/{col}": v for member, row in numbers.iterrows() for col, v in row.items()}, step=0)
    md = run_dir / "leaderboard.md"
    for tracker in acc.trackers:
        if tracker.name == "tensorboard" and md.is_file():
            tracker.writer.add_text("leaderboard", md.read_text(), global_step=0)
        elif tracker.name == "mlflow" and md.is_file():
            tracker.log_artifact(str(md))
        elif tracker.name == "wandb":
            tracker.log_table("leaderboard", columns=[str(c) for c in board.columns],
                              data=board.astype(object).where(board.notna(), None).values.tolist())
    finish(acc)
