"""A run folder: what ``bone-zoo train`` leaves in ``--out`` and what ``bone-zoo push`` reads from it.

    RUN/<member>/             one folder per member (zoo.members: model.safetensors, config.json, README.md, ...)
    RUN/leaderboard.csv .md   one row per finished member (zoo.leaderboard), the cross-validated table for --folds
    RUN/oof_predictions.csv   a --folds run's out-of-fold validation predictions, one column per backbone
    RUN/roc.png               the validation ROC of every member (and of each backbone's out-of-fold predictions)
    RUN/.study-id-salt        the run's secret for the study pseudonyms a push uploads; never pushed

The trainer writes the results through :func:`write_results` once its members are finished; a push uploads what
:func:`contents` lists (and renders only in memory what the Hub copy needs differently: the cards, the run card's
leaderboard from the members, :func:`leaderboard_markdown`), and writes nothing here.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from zoo import leaderboard
from zoo.atomic import write_csv, write_text
from zoo.members import MEMBER_FILES, SCORE_FILES, TRAINING_FILES, finished_members, member_subfolders

RESULT_FILES = ("leaderboard.csv", "leaderboard.md", "roc.png")  # written by write_results (and pushed)
OOF_FILE = "oof_predictions.csv"
# hold study ids (pseudonymised on push)
PREDICTION_FILES = ("val_predictions.csv", "calibration_predictions.csv", *SCORE_FILES)
SALT_FILE = ".study-id-salt"  # the run's secret for study pseudonyms: written by the trainer, never pushed
NO_MEMBERS = "(no finished members)"


def write_results(run_dir: str | Path) -> pd.DataFrame:
    """Write leaderboard.csv, oof_predictions.csv (a --folds run), leaderboard.md and roc.png into ``run_dir``;
    returns the leaderboard (empty, and nothing written, when no member finished)."""
    from zoo.metrics import plot_roc

    run_dir = Path(run_dir)
    board = leaderboard.collect(run_dir)
    if board.empty:
        return board
    write_csv(board, run_dir / "leaderboard.csv")
    oof, cv_table = out_of_fold(run_dir)
    write_text(run_dir / "leaderboard.md", _markdown(board, cv_table))
    plot_roc(_roc_curves(run_dir, board, oof), run_dir / "roc.png", title="Validation ROC (study level)")
    return board


def _roc_curves(run_dir: Path, board: pd.DataFrame, oof: pd.DataFrame | None) -> dict:
    """name -> (labels, probabilities): each member's validation studies, then each backbone's out-of-fold ones."""
    curves = {}
    for name in board["member"]:
        vp = run_dir / name / "val_predictions.csv"
        if vp.is_file():
            v = pd.read_csv(vp)
            curves[name] = (v["label"].to_numpy(), v["prob"].to_numpy())
    if oof is not None:
        for g in oof.columns[2:]:
            curves[f"{g} (out-of-fold)"] = (oof["label"].to_numpy(), oof[g].to_numpy())
    return curves


def leaderboard_markdown(run_dir: str | Path) -> str:
    """The leaderboard of ``run_dir``'s finished members as leaderboard.md has it, rendered now from the members
    (``leaderboard.collect``) in memory: what a push puts on the run card, whatever leaderboard.md says or lacks."""
    board = leaderboard.collect(run_dir)
    return _markdown(board, _out_of_fold(Path(run_dir))[1]) if not board.empty else NO_MEMBERS


def _markdown(board: pd.DataFrame, cv_table: str) -> str:
    return leaderboard.to_markdown(board) + "\n" + cv_table


def out_of_fold(run_dir: str | Path) -> tuple[pd.DataFrame | None, str]:
    """For a ``--folds`` run: ``id, label`` and one column per backbone with its out-of-fold validation predictions
    (every labelled study once; each fold member's calibration applied, so the folds share one scale), written to
    ``oof_predictions.csv``, and the markdown table of their AUCs (:func:`zoo.leaderboard.cross_validated`);
    (None, "") when no member was trained with folds. The ensemble's fold groups compute them."""
    df, table = _out_of_fold(Path(run_dir))
    if df is not None:
        write_csv(df, Path(run_dir) / OOF_FILE)
    return df, table


def _out_of_fold(run_dir: Path) -> tuple[pd.DataFrame | None, str]:
    """:func:`out_of_fold` in memory (nothing written)."""
    from zoo.ensemble import Ensemble
    from zoo.loader import Member

    run_dir = Path(run_dir)
    members = [Member(d.name, d) for d in finished_members(run_dir)]
    if not any(m.group != m.name for m in members):
        return None, ""
    kept = [(g, f) for g in Ensemble(members).groups if len(g.members) > 1
            if (f := g.val_predictions(calibrated=True)) is not None]  # a fold member without them: left out
    if not kept:
        return None, ""
    df = None
    for g, f in kept:
        f = f.rename(columns={"prob": g.name})
        df = f if df is None else df.merge(f.drop(columns="label"), on="id", how="outer")
    return df, leaderboard.cross_validated([{"backbone": g.name, "folds": len(g.members), "out-of-fold AUC": g.val_auc,
                                             "studies": int(df[g.name].notna().sum())} for g, _ in kept])


@dataclass
class RunContents:
    """What a run folder holds for a push: its member folders and, per path in the repo, the local file (members'
    files, then the results), all inside the run; what was left out (a symlink out of the run) in ``notes``."""

    members: list[Path] = field(default_factory=list)
    files: dict[str, Path] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    def keep(self, rel: str, f: Path, root: Path) -> None:
        if _inside(f, root):
            self.files[rel] = f
        else:
            self.notes.append(f"{f}: a symlink out of the run folder (to {f.resolve()}); not pushed")


def contents(run_dir: str | Path) -> RunContents:
    """The member folders of ``run_dir`` and the files a push may upload: each member's file set (zoo.members), the
    run's results and prediction files. A member folder or file that is a symlink out of the run is left out with a
    note; the salt, checkpoints and anything else are not listed. A run without members is a FileNotFoundError."""
    run_dir = Path(run_dir)
    root = run_dir.resolve()
    found = member_subfolders(run_dir)
    if not found:
        raise FileNotFoundError(f"{run_dir}: no member folders to push (train with `python train_all.py`)")
    out = RunContents()
    for d in found:
        if not _inside(d, root):
            out.notes.append(f"{d}: a symlink out of the run folder (to {d.resolve()}); not pushed")
            continue
        out.members.append(d)
        for name in dict.fromkeys(MEMBER_FILES + TRAINING_FILES + PREDICTION_FILES):
            if (d / name).is_file() or (d / name).is_symlink():
                out.keep(f"{d.name}/{name}", d / name, root)
    for name in RESULT_FILES + PREDICTION_FILES:
        if (run_dir / name).is_file() or (run_dir / name).is_symlink():
            out.keep(name, run_dir / name, root)
    return out


def _inside(path: Path, root: Path) -> bool:
    """Whether ``path``, symlinks resolved, lies inside ``root`` (itself resolved)."""
    try:
        path.resolve().relative_to(root)
    except (ValueError, OSError):
        return False
    return True


def study_id_salt(run_dir: str | Path) -> tuple[bytes, str | None]:
    """The run's secret salt for study pseudonyms (``RUN/.study-id-salt``, written by the trainer, never pushed);
    a one-off random salt, with a note saying so, for a run trained before it existed (nothing is written)."""
    f = Path(run_dir) / SALT_FILE
    if f.is_file():
        return bytes.fromhex(f.read_text().strip()), None
    return secrets.token_bytes(32), (f"{f}: missing (run trained by an older bone-zoo): this push uses a one-off salt, "
                                     "so its study pseudonyms match no other push of this run")


def ensure_study_id_salt(run_dir: str | Path) -> Path:
    """``RUN/.study-id-salt``: 32 random bytes (hex), created once per run folder, readable by its owner only."""
    f = Path(run_dir) / SALT_FILE
    if not f.is_file():
        write_text(f, secrets.token_hex(32) + "\n")
        f.chmod(0o600)
    return f
