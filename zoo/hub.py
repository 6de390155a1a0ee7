"""Hugging Face Hub I/O for runs: one model repo per run, one sub-folder per member, one commit per push.

The member folder format *is* the Hub format, so ``hf download ORG/NAME --local-dir weights/`` gives a run folder
that ``predict.py --models weights/`` reads as it is.
"""

from __future__ import annotations

from pathlib import Path

from huggingface_hub import HfApi, snapshot_download
from huggingface_hub.errors import LocalEntryNotFoundError, RepositoryNotFoundError, RevisionNotFoundError

from zoo import leaderboard
from zoo.atomic import write_text
from zoo.card import member_card, run_card
from zoo.members import MEMBER_FILES, TRAINING_FILES, MemberError, member_subfolders, members_in, read_member_config

RUN_FILES = ["README.md", "leaderboard.csv", "leaderboard.md", "roc.png"]
PUSH_PATTERNS = RUN_FILES + [f"*/{f}" for f in MEMBER_FILES + TRAINING_FILES]


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
    folder directly inside it that holds model.safetensors and config.json. Nothing else the repo holds is downloaded.
    """
    from huggingface_hub import constants

    repo_id, sub = split_repo(spec)
    try:
        files = None
        if not constants.HF_HUB_OFFLINE:
            try:
                files = (api or HfApi(token=token)).list_repo_files(repo_id, revision=revision, repo_type="model")
            except (RepositoryNotFoundError, RevisionNotFoundError):
                raise
            except _UNREACHABLE:  # offline, Hub down, private without a token: the cache may still hold it
                files = None
        patterns = _member_files(files, sub) if files is not None else _member_patterns(sub)
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
    member, else of each member folder directly inside it (what :func:`zoo.members.members_in` then finds); escaped,
    as allow_patterns are fnmatch patterns."""
    import glob

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
    return [glob.escape(f"{d}{name}") for d in dirs for name in DOWNLOAD_FILES if f"{d}{name}" in present]


def _member_patterns(sub: str) -> list[str]:
    """Without a listing (offline: only the cache is read), the same file names as patterns."""
    prefix = f"{sub}/" if sub else ""
    return [f"{prefix}{d}{name}" for d in ("", "*/") for name in DOWNLOAD_FILES]


def refresh_cards(run_dir: str | Path, repo_id: str) -> str:
    """Rewrite the member cards with the repo's load snippet and the run card with its leaderboard."""
    run_dir = Path(run_dir)
    members = member_subfolders(run_dir)
    if not members:
        raise FileNotFoundError(f"{run_dir}: no member folders to push (train with `python train_all.py`)")
    for d in members:
        write_text(d / "README.md", str(member_card(read_member_config(d), repo_id=repo_id, subfolder=d.name)))
    board = leaderboard.write(run_dir)
    dataset = read_member_config(members[0]).get("training", {}).get("dataset_name")
    md = leaderboard.to_markdown(board) if not board.empty else "(no finished members)"
    write_text(run_dir / "README.md", str(run_card(repo_id, md, [d.name for d in members], dataset,
                                                   configs=[read_member_config(d) for d in members])))
    return md


def push_run(run_dir: str | Path, repo_id: str, *, private: bool | None = None, revision: str | None = None,
             token: str | None = None, commit_message: str | None = None, api: HfApi | None = None) -> str:
    """Upload a run folder (members, leaderboard, cards) to ``repo_id`` in one commit; returns the commit URL.

    The token comes from ``token``, else huggingface_hub's usual places (``HF_TOKEN``, ``hf auth login``).
    """
    run_dir = Path(run_dir)
    refresh_cards(run_dir, repo_id)
    api = api or HfApi(token=token)
    api.create_repo(repo_id, repo_type="model", private=private, exist_ok=True)
    if revision:
        api.create_branch(repo_id, branch=revision, repo_type="model", exist_ok=True)
    n = len(member_subfolders(run_dir))
    info = api.upload_folder(
        repo_id=repo_id, folder_path=str(run_dir), repo_type="model", revision=revision,
        commit_message=commit_message or f"bone-zoo run: {n} member(s)", allow_patterns=PUSH_PATTERNS,
        ignore_patterns=["*/checkpoint/*", ".*"],
    )
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
