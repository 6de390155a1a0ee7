"""Hugging Face Hub I/O for runs: one model repo per run, one sub-folder per member, one commit per push.

The member folder format *is* the Hub format, so ``hf download ORG/NAME --local-dir weights/`` gives a run folder
that ``predict.py --models weights/`` reads as it is.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import secrets
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath, PureWindowsPath

import pandas as pd
from huggingface_hub import HfApi, snapshot_download
from huggingface_hub.errors import LocalEntryNotFoundError, RepositoryNotFoundError, RevisionNotFoundError

from zoo import leaderboard
from zoo.atomic import write_text
from zoo.card import member_card, run_card
from zoo.members import (
    GRAPH_FILES,
    MAX_SMALL_FILE_BYTES,
    MAX_WEIGHTS_BYTES,
    MEMBER_FILES,
    TRAINING_FILES,
    WEIGHTS,
    MemberError,
    member_subfolders,
    members_in,
    read_member_config,
)

RUN_FILES = ["README.md", "leaderboard.csv", "leaderboard.md", "roc.png"]
PREDICTION_FILES = ("val_predictions.csv", "calibration_predictions.csv")  # study ids: pseudonymised when pushed
PUSH_PATTERNS = RUN_FILES + [f"*/{f}" for f in MEMBER_FILES + TRAINING_FILES + PREDICTION_FILES]
LOCAL_PATH_FIELDS = ("pretrained_weights",)  # config.json fields that hold a local path: pushed as the file name only
SALT_FILE = ".study-id-salt"  # the run's secret for study pseudonyms: written by train_all.py, never pushed


def split_repo(spec: str) -> tuple[str, str]:
    """``ORG/NAME[/sub/folder]`` -> (``ORG/NAME``, ``sub/folder`` or "")."""
    parts = spec.strip("/").split("/")
    if len(parts) < 2 or not all(parts[:2]):
        raise ValueError(f"{spec!r} is not a Hub model id like ORG/NAME")
    return "/".join(parts[:2]), "/".join(parts[2:])


def download_members(spec: str, revision: str | None = None, cache_dir: str | Path | None = None,
                     token: str | None = None, api: HfApi | None = None) -> list[Path]:
    """Download (or, with ``HF_HUB_OFFLINE=1``, find in the cache) the members of a Hub repo; their folders.

    The repo is listed first and only member files are fetched: the member file set (``MEMBER_FILES`` +
    ``TRAINING_FILES``) of the folder named (``ORG/NAME/sub``, or the repo root) when it is a member, else of each
    folder directly inside it that holds model.safetensors and config.json. Nothing else the repo holds is downloaded,
    and nothing is downloaded when a chosen file is over its size bound (:func:`check_sizes`) or the repo names a
    path outside itself.
    """
    import glob

    from huggingface_hub import constants

    repo_id, sub = split_repo(spec)
    try:
        files = None
        if not constants.HF_HUB_OFFLINE:
            try:
                files = repo_listing(api or HfApi(token=token), repo_id, revision, spec)
            except (RepositoryNotFoundError, RevisionNotFoundError):
                raise
            except _UNREACHABLE:  # offline, Hub down, private without a token: the cache may still hold it
                files = None
        if files is not None:
            chosen = _member_files(list(files), sub)
            check_sizes(files, chosen, spec)
            patterns = [glob.escape(f) for f in chosen]  # allow_patterns are fnmatch patterns
        else:
            patterns = _member_patterns(sub)
        if not patterns:
            raise MemberError(f"hf://{spec}: the repo holds no bone-zoo member (model.safetensors + config.json)"
                              f"{' under ' + sub if sub else ''}; nothing downloaded")
        root = Path(snapshot_download(repo_id, revision=revision, cache_dir=cache_dir, token=token,
                                      allow_patterns=patterns))
    except LocalEntryNotFoundError as exc:
        raise MemberError(f"hf://{spec}: not in the local Hub cache and the Hub cannot be reached (HF_HUB_OFFLINE=1 "
                          "or no network); download it once with `hf download " + repo_id + "`") from exc
    except (RepositoryNotFoundError, RevisionNotFoundError) as exc:
        raise MemberError(f"hf://{spec}: no such repo or revision on the Hub (private? log in with `hf auth login` "
                          "or set HF_TOKEN)") from exc
    found = members_in(root / sub if sub else root)
    if not found:
        raise MemberError(f"hf://{spec}: the repo holds no bone-zoo member (model.safetensors + config.json)")
    return found


DOWNLOAD_FILES = MEMBER_FILES + TRAINING_FILES  # what a member needs in an ensemble (val_predictions.csv: combiners)
try:
    from huggingface_hub.utils import httpx as _httpx  # huggingface_hub >= 1.0 talks httpx

    _UNREACHABLE: tuple[type[BaseException], ...] = (OSError, _httpx.TransportError)
except ImportError:  # older ones talk requests, whose errors are OSErrors
    _UNREACHABLE = (OSError,)


def _member_files(files: list[str], sub: str) -> list[str]:
    """The paths to download from a repo listing: the member file set of ``sub`` (the root if "") when it is a
    member, else of each member folder directly inside it (what :func:`zoo.members.members_in` then finds)."""
    present = set(files)
    prefix = f"{sub}/" if sub else ""

    def is_member(d: str) -> bool:
        return f"{d}model.safetensors" in present and f"{d}config.json" in present

    if is_member(prefix):
        dirs = [prefix]
    else:
        dirs = sorted({f[: -len("model.safetensors")] for f in present if f.startswith(prefix)
                       and f.endswith("/model.safetensors") and f[len(prefix):].count("/") == 1})
        dirs = [d for d in dirs if is_member(d)]
    return [f"{d}{name}" for d in dirs for name in DOWNLOAD_FILES if f"{d}{name}" in present]


def repo_listing(api: HfApi, repo_id: str, revision: str | None, spec: str) -> dict[str, int]:
    """Path -> size in bytes of every file of a Hub repo (one listing, before anything is downloaded); a repo that
    names a path outside itself (``..``, absolute) is a :class:`MemberError`."""
    out: dict[str, int] = {}
    for entry in api.list_repo_tree(repo_id, revision=revision, repo_type="model", recursive=True):
        if getattr(entry, "size", None) is None:  # a folder
            continue
        path = str(entry.path)
        if path.startswith(("/", "\\")) or "\\" in path or ".." in PurePosixPath(path).parts \
                or PureWindowsPath(path).drive:
            raise MemberError(f"hf://{spec}: the repo lists the file {path!r}, a path outside the repo; nothing "
                              "downloaded. It was not written by bone-zoo push")
        out[path] = int(entry.size)
    return out


def size_limit(path: str) -> int:
    """The most bytes a member file may have when downloaded (the bounds zoo.members reads with)."""
    return MAX_WEIGHTS_BYTES if path.rsplit("/", 1)[-1] in (WEIGHTS, *GRAPH_FILES) else MAX_SMALL_FILE_BYTES


def check_sizes(sizes: dict[str, int], paths: list[str], spec: str) -> None:
    """Refuse, before anything is downloaded, a chosen file over its bound (:func:`size_limit`)."""
    over = [(p, sizes[p]) for p in paths if p in sizes and sizes[p] > size_limit(p)]
    if over:
        p, n = over[0]
        raise MemberError(f"hf://{spec}: {p} is {n / 2**20:.0f} MB, over the {size_limit(p) / 2**20:.0f} MB a "
                          f"bone-zoo member file may hold ({len(over)} file(s) over their bound); nothing downloaded")


def _member_patterns(sub: str) -> list[str]:
    """Without a listing (offline: only the cache is read), the same file names as patterns."""
    prefix = f"{sub}/" if sub else ""
    return [f"{prefix}{d}{name}" for d in ("", "*/") for name in DOWNLOAD_FILES]


class PushError(ValueError):
    """A push that would publish what it must not (a public repo not asked for); the message says what to do."""


@dataclass
class PushPlan:
    """What a push uploads: path in the repo -> bytes (rendered here) or a local file inside the run (as it is),
    and notes on what was left out and why. Building it reads the run folder and writes nothing."""

    files: dict[str, bytes | Path] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    members: list[str] = field(default_factory=list)


def _inside(path: Path, root: Path) -> bool:
    """Whether ``path``, symlinks resolved, lies inside ``root`` (itself resolved)."""
    try:
        path.resolve().relative_to(root)
    except (ValueError, OSError):
        return False
    return True


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


def study_id_salt(run_dir: str | Path) -> tuple[bytes, str | None]:
    """The run's secret salt for study pseudonyms (``RUN/.study-id-salt``, written by train_all.py, never pushed);
    a one-off random salt, with a note saying so, for a run trained before it existed (push writes nothing)."""
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


def pseudonyms(ids, salt: bytes) -> dict[str, str]:
    """Study id -> 16 hex digits of HMAC-SHA256(salt, id), a function of that id alone (no rank: nothing of the ids'
    order leaks). Without the salt, which never leaves the machine, a pseudonym cannot be tied to a study id; the
    ensemble fits on validation rows in an order that does not depend on the ids (zoo.ensemble._content_order), so
    pushed predictions give the same answers as local ones."""
    return {sid: hmac.new(salt, sid.encode(), hashlib.sha256).hexdigest()[:16] for sid in sorted({str(i) for i in ids})}


def plan_push(run_dir: str | Path, repo_id: str, include_study_ids: bool = False) -> PushPlan:
    """What :func:`push_run` uploads for ``run_dir``: each member's files (cards rendered for ``repo_id``, config.json
    without local paths, prediction CSVs with pseudonymous study ids unless ``include_study_ids``), the run card and
    the leaderboard files as training wrote them. A file or member folder that is a symlink out of the run is left
    out with a note. Nothing in the run folder is written."""
    run_dir = Path(run_dir)
    root = run_dir.resolve()
    members = member_subfolders(run_dir)
    if not members:
        raise FileNotFoundError(f"{run_dir}: no member folders to push (train with `python train_all.py`)")
    plan = PushPlan()
    kept = []
    for d in members:
        if not _inside(d, root):
            plan.notes.append(f"{d}: a symlink out of the run folder (to {d.resolve()}); not pushed")
        else:
            kept.append(d)
    csvs: dict[str, pd.DataFrame] = {}
    for d in kept:
        cfg = _local_path_free(read_member_config(d))
        for name in dict.fromkeys(MEMBER_FILES + TRAINING_FILES + PREDICTION_FILES):
            f, rel = d / name, f"{d.name}/{name}"
            if name == "README.md":
                plan.files[rel] = str(member_card(cfg, repo_id=repo_id, subfolder=d.name)).encode()
            elif not (f.is_file() or f.is_symlink()):
                continue
            elif not _inside(f, root):
                plan.notes.append(f"{f}: a symlink out of the run folder (to {f.resolve()}); not pushed")
            elif name == "config.json":
                plan.files[rel] = (json.dumps(cfg, indent=2) + "\n").encode()
            elif name in PREDICTION_FILES and not include_study_ids:
                csvs[rel] = pd.read_csv(f, dtype={"id": str}, keep_default_na=False)
            else:
                plan.files[rel] = f.resolve()
        plan.members.append(d.name)
    for name in [*RUN_FILES[1:], *PREDICTION_FILES]:
        f = run_dir / name
        if not (f.is_file() or f.is_symlink()):
            continue
        if not _inside(f, root):
            plan.notes.append(f"{f}: a symlink out of the run folder (to {f.resolve()}); not pushed")
        elif name in PREDICTION_FILES and not include_study_ids:
            csvs[name] = pd.read_csv(f, dtype={"id": str}, keep_default_na=False)
        else:
            plan.files[name] = f.resolve()
    if csvs:
        salt, note = study_id_salt(run_dir)
        plan.notes += [note] if note else []
        names = pseudonyms([i for df in csvs.values() if "id" in df for i in df["id"]], salt)
        for rel, df in csvs.items():
            if "id" in df:
                df = df.assign(id=df["id"].map(names))
            plan.files[rel] = df.to_csv(index=False).encode()
    board = leaderboard.collect(run_dir)
    md = leaderboard.to_markdown(board) if not board.empty else "(no finished members)"
    dataset = read_member_config(kept[0]).get("training", {}).get("dataset_name") if kept else None
    plan.files["README.md"] = str(run_card(repo_id, md, plan.members, dataset,
                                            configs=[_local_path_free(read_member_config(d)) for d in kept])).encode()
    return plan


def push_run(run_dir: str | Path, repo_id: str, *, private: bool = True, revision: str | None = None,
             token: str | None = None, commit_message: str | None = None, include_study_ids: bool = False,
             api: HfApi | None = None, say=print) -> str:
    """Upload a run folder (members, leaderboard, cards) to ``repo_id`` in one commit; returns the commit URL.

    The repo is created private unless ``private=False`` (``--public``); an existing public repo is refused unless
    ``private=False``. What is uploaded is :func:`plan_push`'s: study ids pseudonymised, no local path, no file from
    outside the run; the local run folder is only read. The token comes from ``token``, else huggingface_hub's usual
    places (``HF_TOKEN``, ``hf auth login``).
    """
    from huggingface_hub import CommitOperationAdd

    plan = plan_push(run_dir, repo_id, include_study_ids)
    for note in plan.notes:
        say(f"note: {note}")
    api = api or HfApi(token=token)
    api.create_repo(repo_id, repo_type="model", private=private, exist_ok=True)
    if private and getattr(api.repo_info(repo_id, repo_type="model"), "private", None) is False:
        raise PushError(f"{repo_id} already exists and is PUBLIC: nothing pushed. Make it private on the Hub, push to "
                        "another repo, or give --public to publish this run")
    if revision:
        api.create_branch(repo_id, branch=revision, repo_type="model", exist_ok=True)
    ops = [CommitOperationAdd(path_in_repo=rel, path_or_fileobj=content if isinstance(content, bytes) else str(content))
           for rel, content in sorted(plan.files.items())]
    info = api.create_commit(repo_id, ops, repo_type="model", revision=revision,
                             commit_message=commit_message or f"bone-zoo run: {len(plan.members)} member(s)")
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
