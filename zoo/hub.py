"""Pushing a run to the Hugging Face Hub: one model repo per run, one sub-folder per member, one commit per push.

The member folder format *is* the Hub format, so ``hf download ORG/NAME --local-dir weights/`` gives a run folder
that ``predict.py --models weights/`` reads as it is. Downloading members is ``zoo.members``' (member files only);
what a run folder holds is ``zoo.run``'s. A push uploads what the run wrote, and renders in memory only what the Hub
copy needs differently (cards for the repo, config.json without local paths, pseudonymous study ids); it writes
nothing locally.
"""

from __future__ import annotations

import hashlib
import hmac
import json
from dataclasses import dataclass, field
from pathlib import Path, PureWindowsPath

import pandas as pd

from zoo.card import member_card, run_card
from zoo.members import read_member_config
from zoo.run import PREDICTION_FILES, contents, leaderboard_markdown, study_id_salt

LOCAL_PATH_FIELDS = ("pretrained_weights",)  # config.json fields that hold a local path: pushed as the file name only


class PushError(ValueError):
    """A push that would publish what it must not (a public repo not asked for); the message says what to do."""


@dataclass
class PushPlan:
    """What a push uploads: path in the repo -> bytes (rendered here) or a local file inside the run (as it is),
    and notes on what was left out and why. Building it reads the run folder and writes nothing."""

    files: dict[str, bytes | Path] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    members: list[str] = field(default_factory=list)


def _local_path_free(value, key: str = ""):
    """config.json as pushed: local paths (``--pretrained-weights``, any absolute path) reduced to the file name."""
    if isinstance(value, dict):
        return {k: _local_path_free(v, k) for k, v in value.items()}
    if isinstance(value, list):
        return [_local_path_free(v, key) for v in value]
    if isinstance(value, str) and value and (key in LOCAL_PATH_FIELDS or _looks_absolute(value)):
        return PureWindowsPath(value).name if "\\" in value else Path(value).name
    return value


def _looks_absolute(s: str) -> bool:
    return s.startswith(("/", "~", "\\\\")) or PureWindowsPath(s).drive != ""


def pseudonyms(ids, salt: bytes) -> dict[str, str]:
    """Study id -> 16 hex digits of HMAC-SHA256(salt, id), a function of that id alone (no rank: nothing of the ids'
    order leaks). Without the salt, which never leaves the machine, a pseudonym cannot be tied to a study id; the
    ensemble fits on validation rows in an order that does not depend on the ids (zoo.ensemble._content_order), so
    pushed predictions give the same answers as local ones."""
    return {sid: hmac.new(salt, sid.encode(), hashlib.sha256).hexdigest()[:16] for sid in sorted({str(i) for i in ids})}


def plan_push(run_dir: str | Path, repo_id: str, include_study_ids: bool = False) -> PushPlan:
    """What :func:`push_run` uploads for ``run_dir``: the files :func:`zoo.run.contents` lists (nothing a symlink
    points to outside the run, with a note), with each member's card rendered for ``repo_id``, its config.json
    without local paths, the prediction CSVs with pseudonymous study ids unless ``include_study_ids``, and the run
    card with the members' leaderboard rendered now, in memory (zoo.run.leaderboard_markdown: a stale or missing
    leaderboard.md does not reach it). Nothing in the run folder is written."""
    run = contents(run_dir)
    plan = PushPlan(notes=list(run.notes), members=[d.name for d in run.members])
    configs = {d.name: _local_path_free(read_member_config(d)) for d in run.members}
    csvs: dict[str, pd.DataFrame] = {}
    for rel, f in run.files.items():
        member, _, name = rel.rpartition("/")
        if name in PREDICTION_FILES and not include_study_ids:
            csvs[rel] = pd.read_csv(f, dtype={"id": str}, keep_default_na=False)
        elif member and name == "config.json":
            plan.files[rel] = (json.dumps(configs[member], indent=2) + "\n").encode()
        elif not (member and name == "README.md"):  # a member's card is rendered for the repo below
            plan.files[rel] = f.resolve()
    for name, cfg in configs.items():
        plan.files[f"{name}/README.md"] = str(member_card(cfg, repo_id=repo_id, subfolder=name)).encode()
    if csvs:
        _pseudonymise(plan, csvs, run_dir)
    dataset = next(iter(configs.values()), {}).get("training", {}).get("dataset_name")
    plan.files["README.md"] = str(run_card(repo_id, leaderboard_markdown(run_dir), plan.members, dataset,
                                            configs=list(configs.values()))).encode()
    return plan


def _pseudonymise(plan: PushPlan, csvs: dict[str, pd.DataFrame], run_dir: str | Path) -> None:
    """Each prediction CSV into ``plan`` with its study ids replaced by the run's salted pseudonyms."""
    salt, note = study_id_salt(run_dir)
    plan.notes += [note] if note else []
    names = pseudonyms([i for df in csvs.values() if "id" in df for i in df["id"]], salt)
    for rel, df in csvs.items():
        if "id" in df:
            df = df.assign(id=df["id"].map(names))
        plan.files[rel] = df.to_csv(index=False).encode()


@dataclass(frozen=True)
class PushOptions:
    """How a run is pushed: private unless ``private=False`` (``--public``); the branch (``revision``, created if
    missing); the token (else huggingface_hub's usual places: ``HF_TOKEN``, ``hf auth login``); the commit message;
    real study ids only with ``include_study_ids``."""

    private: bool = True
    revision: str | None = None
    token: str | None = None
    commit_message: str | None = None
    include_study_ids: bool = False


def push_run(run_dir: str | Path, repo_id: str, options: PushOptions = PushOptions(), *, api=None,
             say=print) -> str:
    """Upload a run folder (members, leaderboard, cards) to ``repo_id`` in one commit; returns the commit URL.

    The repo is created private unless ``options.private`` is False; an existing public repo is refused unless it
    is. What is uploaded is :func:`plan_push`'s: study ids pseudonymised, no local path, no file from outside the
    run; the local run folder is only read.
    """
    from huggingface_hub import CommitOperationAdd, HfApi

    plan = plan_push(run_dir, repo_id, options.include_study_ids)
    for note in plan.notes:
        say(f"note: {note}")
    api = api or HfApi(token=options.token)
    api.create_repo(repo_id, repo_type="model", private=options.private, exist_ok=True)
    if options.private and getattr(api.repo_info(repo_id, repo_type="model"), "private", None) is False:
        raise PushError(f"{repo_id} already exists and is PUBLIC: nothing pushed. Make it private on the Hub, push to "
                        "another repo, or give --public to publish this run")
    if options.revision:
        api.create_branch(repo_id, branch=options.revision, repo_type="model", exist_ok=True)
    ops = [CommitOperationAdd(path_in_repo=rel, path_or_fileobj=content if isinstance(content, bytes) else str(content))
           for rel, content in sorted(plan.files.items())]
    message = options.commit_message or f"bone-zoo run: {len(plan.members)} member(s)"
    info = api.create_commit(repo_id, ops, repo_type="model", revision=options.revision, commit_message=message)
    return str(getattr(info, "commit_url", info))


def hub_reachable(timeout: float = 3.0, host: str = "huggingface.co", port: int = 443) -> tuple[bool, str]:
    """Whether pretrained weights can be fetched now, decided within ``timeout`` seconds (never a long network wait):
    False at once under ``HF_HUB_OFFLINE=1``, else a TCP connection to the Hub. Returns (reachable, why not)."""
    import socket

    from huggingface_hub import constants

    if constants.HF_HUB_OFFLINE:
        return False, "HF_HUB_OFFLINE is set"
    try:
        socket.create_connection((host, port), timeout=timeout).close()
    except OSError as exc:
        return False, f"{host} not reachable within {timeout:.0f} s ({type(exc).__name__})"
    return True, ""
