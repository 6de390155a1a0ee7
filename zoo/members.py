"""What a member is on disk: its folder and files, writing them (:func:`save_files`), finding members (folders,
run folders, wildcards, ``hf://`` ids), downloading a member's files (and nothing else) from the Hub, reading their
config, and the one verified read every load goes through (:func:`read_verified`: the weights' hash against
config.json, the config's sizes against the safetensors header). The one place for it; it builds no network
(``zoo.model`` builds ``BoneClassifier`` from what this module read, ``zoo.loader`` loads members for inference), so
nothing here imports PyTorch or ``zoo.model``.

A member folder holds ``model.safetensors`` + ``config.json`` (the constructor of ``zoo.BoneClassifier``) +
``README.md`` (its model card); a finished training run adds ``metrics.json`` (written last), ``metrics.jsonl``,
``val_predictions.csv``, ``curves.png`` and (unless ``--no-export``) ``model.onnx`` / ``model.int8.onnx`` with
their scores of the validation (and calibration) studies, ``val_predictions.<backend>.csv`` (zoo.graph_scores), which
``python -m zoo export`` writes for older members.
"""

from __future__ import annotations

import fnmatch
import hashlib
import json
import math
import shutil
import tempfile
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path, PurePosixPath, PureWindowsPath
from typing import Any

MEMBER_FILES = ("model.safetensors", "config.json", "README.md")  # what loading a member needs
GRAPH_FILES = ("model.onnx", "model.int8.onnx")  # exported graphs (zoo.onnx): fp32, static int8
GRAPH_BACKENDS = ("onnx", "onnx-int8", "openvino", "openvino-int8")  # the runtimes x graphs a member can run on
RUNTIME_NAMES = {"onnx": "ONNX Runtime", "openvino": "OpenVINO"}  # the graph runtimes, as messages name them
GRAPH_BATCH = 4  # images per graph run in predict.py (without --batch-size) and at export: what
# zoo.inference.auto_batch_size picks on CPU


def score_file(split: str, backend: str) -> str:
    """The file of a graph backend's scores of the member's ``val`` or ``calibration`` studies (zoo.graph_scores)."""
    if split not in ("val", "calibration") or backend not in GRAPH_BACKENDS:
        raise ValueError(f"no score file for split {split!r} of backend {backend!r}")
    return f"{split}_predictions.{backend}.csv"


SCORE_FILES = tuple(score_file(s, b) for s in ("val", "calibration") for b in GRAPH_BACKENDS)
# what training adds (calibration_predictions.csv with a calibration split; the graphs, and their scores of those
# studies, unless --no-export)
TRAINING_FILES = ("metrics.json", "metrics.jsonl", "val_predictions.csv", "calibration_predictions.csv",
                  "curves.png", *GRAPH_FILES, *SCORE_FILES)
HUB_PREFIX = "hf://"


WEIGHTS = "model.safetensors"
WEIGHTS_HASH = "weights_sha256"  # config.json's SHA-256 of model.safetensors, written by save_files
RETRIES = 8  # a verified read retried while a writer is between its renames (milliseconds), then refused
# Bounds on what a config.json may ask to allocate, whatever its weights say (a downloaded config is untrusted)
MAX_IMG_SIZE = 1024  # the method's 512 px with a 2x margin: a bigger one costs each demo request 4x the CAM work
MAX_HEAD_LAYERS = 4  # the recipes' head is 1024-512 (2 layers)
MAX_HEAD_WIDTH = 8192  # 8x the recipes' widest layer
MAX_HEADER_BYTES = 100_000_000  # safetensors' own limit on its JSON header
MAX_WEIGHTS_BYTES = 2 * 2**30  # model.safetensors read (or downloaded); the zoo's largest backbone is ~0.1 GB
MAX_SMALL_FILE_BYTES = 50 * 2**20  # config.json, cards, CSVs, metrics
# bytes per element of each safetensors dtype (the format's table), to check every header entry against its offsets
DTYPE_BYTES = {"BOOL": 1, "U8": 1, "I8": 1, "F8_E5M2": 1, "F8_E4M3": 1, "I16": 2, "U16": 2, "F16": 2, "BF16": 2,
               "I32": 4, "U32": 4, "F32": 4, "I64": 8, "U64": 8, "F64": 8}


class MemberError(ValueError):
    """A --models entry that names no usable member; the message says which and why."""


class WeightsMismatch(MemberError):
    """A member folder whose weights are not the ones its config.json names (``weights_sha256``)."""


class ShapeMismatch(MemberError):
    """A member whose config.json asks for shapes (head sizes, image size) its weights do not hold, or for absurd
    sizes: refused before any module is built."""


def read_member_config(folder: str | Path) -> dict[str, Any]:
    """config.json of a member folder, without building the model; a missing or broken one is a
    :class:`MemberError` that names it."""
    f = Path(folder) / "config.json"
    try:
        _check_size(f, MAX_SMALL_FILE_BYTES)
        cfg = json.loads(f.read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise MemberError(f"{f}: missing; a member folder holds model.safetensors + config.json") from exc
    except (ValueError, UnicodeDecodeError, OSError) as exc:
        raise MemberError(f"{f}: not valid JSON ({exc}); copy or download the member again") from exc
    if not isinstance(cfg, dict) or not isinstance(cfg.get("backbone"), str):
        raise MemberError(f"{f}: not a bone-zoo member config (no \"backbone\"); copy or download it again")
    return cfg


def _check_size(f: Path, limit: int) -> None:
    """Refuse a member file bigger than ``limit`` before it is read (a missing one: FileNotFoundError)."""
    size = f.stat().st_size
    if size > limit:
        raise MemberError(f"{f}: {size / 2**20:.0f} MB, over the {limit / 2**20:.0f} MB a bone-zoo member file may "
                          "hold; not read. Copy or download the member again")


def file_sha256(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def save_files(folder: str | Path, write: Callable[[Path], None]) -> str:
    """Write a member into ``folder``: ``write(tmp)`` puts model.safetensors, config.json and README.md into a fresh
    temporary folder inside it; config.json then gets the SHA-256 of those weights (``weights_sha256``) and each
    member file replaces its old one atomically and durably (flushed before its rename, the folder after). The hash
    ties the config to its weights between the renames (:func:`read_verified` waits for a writer). Returns the hash."""
    from zoo.atomic import durable_replace

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".saving-", dir=folder))
    try:
        write(tmp)
        cfg = json.loads((tmp / "config.json").read_text())
        cfg[WEIGHTS_HASH] = file_sha256(tmp / WEIGHTS)
        (tmp / "config.json").write_text(json.dumps(cfg, indent=2, sort_keys=True))
        for name in MEMBER_FILES:
            durable_replace(tmp / name, folder / name)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return cfg[WEIGHTS_HASH]


@dataclass(frozen=True)
class VerifiedMember:
    """A member's config.json and the bytes of its model.safetensors, read together and checked against each other:
    the weights are the ones the config's hash names, and the config asks for no shape the weights do not hold."""

    folder: Path
    config: dict[str, Any]
    data: bytes  # model.safetensors, exactly as hashed
    sha256: str
    shapes: dict[str, tuple[int, ...]]  # tensor name -> shape, from the safetensors header (no tensor loaded)


def read_verified(folder: str | Path) -> VerifiedMember:
    """The one verified read of a member folder, which every load path goes through (``BoneClassifier.load`` and
    ``from_pretrained`` on a folder, the Hub cache or a Hub id, ``zoo.loader.load_model``, the demo, export).

    config.json and model.safetensors are each read once, as bytes, and checked together: the SHA-256 of the weights
    must be config.json's ``weights_sha256`` (retried while a writer finishes its renames, then refused with
    :class:`WeightsMismatch`), and the sizes the config sets (head widths, image size) must be bounded and match the
    shapes in the safetensors header (:class:`ShapeMismatch`), all before any module is built. A config without the
    hash is refused for a member from the Hub (its cache: ``hf://``, a Hub id), which bone-zoo always pushes with
    one; a local folder written before the hash existed loads with a :class:`UnverifiedWeights` warning that names
    the command to re-save it.
    """
    folder = Path(folder)
    for attempt in range(RETRIES):
        config = read_member_config(folder)
        if WEIGHTS_HASH not in config:
            _unhashed(folder)
        try:
            _check_size(folder / WEIGHTS, MAX_WEIGHTS_BYTES)
            data = (folder / WEIGHTS).read_bytes()
        except FileNotFoundError as exc:
            raise MemberError(f"{folder / WEIGHTS}: missing;{pickles_note(folder)}") from exc
        digest = hashlib.sha256(data).hexdigest()
        expected = config.get(WEIGHTS_HASH)
        if expected is None or digest == expected:
            shapes = safetensors_shapes(data, folder / WEIGHTS)
            check_config_shapes(config, shapes, folder)
            return VerifiedMember(folder, config, data, digest, shapes)
        time.sleep(0.02 * (attempt + 1))  # a writer between its renames is done within milliseconds
    raise WeightsMismatch(f"{folder}: model.safetensors is not the one its config.json names ({WEIGHTS_HASH}): "
                          "damaged or truncated, replaced by hand, or being rewritten. Copy or download the whole "
                          "member folder again")


class UnverifiedWeights(UserWarning):
    """A local member folder whose config.json names no ``weights_sha256`` (saved before bone-zoo wrote it)."""


def from_hub_cache(folder: str | Path) -> bool:
    """Whether ``folder`` is (inside) a snapshot of the Hugging Face cache: ``models--ORG--NAME/snapshots/COMMIT``,
    whatever the cache's location, which is where ``hf://`` members and Hub ids are loaded from."""
    parts = Path(folder).absolute().parts
    return any(a.startswith("models--") and b == "snapshots" for a, b in zip(parts, parts[1:]))


def _unhashed(folder: Path) -> None:
    """A config.json without ``weights_sha256``: refused from the Hub, loaded with a loud warning from a folder."""
    if from_hub_cache(folder):
        raise WeightsMismatch(f"{folder}: config.json names no {WEIGHTS_HASH}, so these weights from the Hub cannot "
                              "be checked against it; refused. Ask the repo's owner to push the member again with "
                              "`bone-zoo push` (which records the hash), or load a revision that has it")
    import warnings

    warnings.warn(f"{folder}: config.json names no {WEIGHTS_HASH} (saved by an older bone-zoo), so its weights are "
                  "loaded UNCHECKED against it. Re-save the member to record the hash: python -c \"from zoo.model "
                  f"import BoneClassifier; BoneClassifier.load('{folder}').save_member('{folder}')\"",
                  UnverifiedWeights, stacklevel=3)


def safetensors_shapes(data: bytes, where: str | Path) -> dict[str, tuple[int, ...]]:
    """Tensor name -> shape from a safetensors file's header (an 8-byte little-endian length, then JSON), without
    loading any tensor. Every entry is checked against the bytes the file holds, as safetensors' own loader does:
    a known dtype, ``itemsize x prod(shape) == end - start``, the entries contiguous from 0 to the end of the file.
    So the shapes returned are ones the file really holds (a header that claims a large head over an empty file is
    refused); a file that is not safetensors is a :class:`MemberError`."""
    n = int.from_bytes(data[:8], "little") if len(data) >= 8 else -1
    try:
        if not 0 < n <= min(MAX_HEADER_BYTES, len(data) - 8):
            raise ValueError(f"header length {n} does not fit a file of {len(data)} bytes")
        header = json.loads(data[8:8 + n])
        shapes, spans = {}, []
        for k, v in header.items():
            if k == "__metadata__":
                continue
            shape = tuple(int(d) for d in v["shape"])
            start, end = (int(o) for o in v["data_offsets"])
            if v["dtype"] not in DTYPE_BYTES or min(shape, default=0) < 0:
                raise ValueError(f"tensor {k}: dtype {v['dtype']!r} or shape {list(shape)} is not one safetensors "
                                 "writes")
            need = DTYPE_BYTES[v["dtype"]] * math.prod(shape)
            if end - start != need:
                raise ValueError(f"tensor {k}: {v['dtype']} {list(shape)} needs {need} bytes, its offsets "
                                 f"[{start}, {end}] hold {end - start}")
            shapes[k] = shape
            spans.append((start, end))
        at = 0
        for start, end in sorted(spans):
            if start != at:
                raise ValueError(f"tensor data at byte {start} where {at} was expected (overlapping or a gap)")
            at = end
        if at != len(data) - 8 - n:
            raise ValueError(f"the tensors hold {at} bytes, the file {len(data) - 8 - n} after its header")
        return shapes
    except (ValueError, TypeError, KeyError, AttributeError, UnicodeDecodeError) as exc:
        raise MemberError(f"{where}: damaged (truncated or not a safetensors file: {exc}); copy or download the "
                          "member again") from exc


def _bounded_int(key: str, value: Any, low: int, high: int, where: Path) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise ShapeMismatch(f"{where / 'config.json'}: {key} = {value!r} is not an integer in [{low}, {high}]; "
                            "this config.json was not written by bone-zoo training: copy or download the member again")
    return value


def check_config_shapes(cfg: dict[str, Any], shapes: dict[str, tuple[int, ...]], folder: str | Path) -> None:
    """Refuse a config whose allocation sizes are absurd or are not the weights' shapes, before any module is built.

    The head is ``[Linear, BatchNorm, Dropout, ReLU] x len(head_hidden)`` then ``Linear(., 1)`` (zoo.head.MLPHead):
    its Linear weights ``head.<i>.weight``, in order, must have the widths ``head_hidden + [1]``, each fed by the one
    before. The image size is bounded here; where the weights record it (a ViT's position embeddings) the model
    skeleton is compared with the weights on the meta device before the network is allocated (zoo.model).
    """
    folder = Path(folder)
    _bounded_int("img_size", cfg.get("img_size", 512), 8, MAX_IMG_SIZE, folder)
    hidden = cfg.get("head_hidden", [1024, 512])
    if not isinstance(hidden, list) or len(hidden) > MAX_HEAD_LAYERS:
        raise ShapeMismatch(f"{folder / 'config.json'}: head_hidden = {hidden!r} is not a list of at most "
                            f"{MAX_HEAD_LAYERS} widths; copy or download the member again")
    for h in hidden:
        _bounded_int("head_hidden", h, 1, MAX_HEAD_WIDTH, folder)
    linears = sorted((int(k.split(".")[1]), s) for k, s in shapes.items()
                     if k.startswith("head.") and k.endswith(".weight") and len(s) == 2 and k.split(".")[1].isdigit())
    widths = [s[0] for _, s in linears]
    fed = all(linears[i][1][1] == linears[i - 1][1][0] for i in range(1, len(linears)))
    if widths != [*hidden, 1] or not fed:
        held = " -> ".join(f"{s[1]}x{s[0]}" for _, s in linears) or "no head"
        raise ShapeMismatch(f"{folder}: its weights do not match its config.json: head_hidden {hidden} asks for "
                            f"head widths {[*hidden, 1]}, the weights hold {held}. Refused before building anything; "
                            "copy or download the whole member folder again")


def is_member_dir(folder: str | Path) -> bool:
    folder = Path(folder)
    return (folder / "model.safetensors").is_file() and (folder / "config.json").is_file()


def member_subfolders(run_dir: str | Path) -> list[Path]:
    """The member folders directly inside a run folder, sorted by name ([] if it is not a folder)."""
    run_dir = Path(run_dir)
    return sorted(d for d in run_dir.iterdir() if d.is_dir() and is_member_dir(d)) if run_dir.is_dir() else []


def members_in(folder: str | Path) -> list[Path]:
    """``[folder]`` if it is a member folder, else the member folders inside it."""
    return [Path(folder)] if is_member_dir(folder) else member_subfolders(folder)


def finished_members(run_dir: str | Path) -> list[Path]:
    """Members of a run whose training finished (metrics.json is written last), sorted by name."""
    return [d for d in member_subfolders(run_dir) if (d / "metrics.json").is_file()]


def resolve_member_dirs(specs: Iterable[str], weights_dir: str | Path = "weights", revision: str | None = None,
                        cache_dir: str | None = None) -> list[Path]:
    """Turn ``--models`` entries into member folders, in order, without duplicates.

    An entry is a member folder, a run folder (every member in it), ``hf://ORG/NAME`` (downloaded and cached; a
    ``/sub/folder`` after the name picks part of the repo), or a wildcard over backbone names of the members under
    ``weights_dir`` (``'regnet*'``).
    """
    out: list[Path] = []
    for spec in specs:
        spec = str(spec)
        if spec.startswith(HUB_PREFIX):
            found = download_members(spec[len(HUB_PREFIX):], revision=revision, cache_dir=cache_dir)
        elif Path(spec).exists():
            found = members_in(Path(spec))
            if not found:
                raise MemberError(f"{spec}: no member in it (a member folder holds model.safetensors and config.json);"
                                  f"{pickles_note(Path(spec))} train some with `python train_all.py`")
        else:
            pool = members_in(Path(weights_dir))
            found = [d for d in pool if fnmatch.fnmatchcase(d.name, spec)
                     or fnmatch.fnmatchcase(read_member_config(d)["backbone"], spec)]
            if not found:
                names = ", ".join(d.name for d in pool) or "none"
                raise MemberError(f"{spec!r} is neither a folder nor a hf:// id, and matches no member under "
                                  f"{weights_dir}/ (members there: {names})")
        out += [d for d in found if d not in out]
    return out


PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl")


def pickles_note(folder: Path) -> str:
    """What a folder without members holds instead, when it is pickled weights (which are never loaded)."""
    found = [p for p in (list(folder.glob("*")) + list(folder.glob("*/*")) if folder.is_dir() else [])
             if p.suffix in PICKLE_SUFFIXES]
    if not found:
        return ""
    return (f" {', '.join(str(p) for p in found[:3])} is never loaded (pickled weights can run code): convert it to "
            "model.safetensors where you trust it;")


def unique_names(folders: list[Path]) -> list[str]:
    """Member names for display: the folder name, prefixed by its run folder where two would clash."""
    names = [f.name for f in folders]
    return [f"{f.parent.name}/{f.name}" if names.count(f.name) > 1 else f.name for f in folders]


# --- the Hub: a member's files of one repo, listed with their sizes before anything is downloaded

def split_repo(spec: str) -> tuple[str, str]:
    """``ORG/NAME[/sub/folder]`` -> (``ORG/NAME``, ``sub/folder`` or "")."""
    parts = spec.strip("/").split("/")
    if len(parts) < 2 or not all(parts[:2]):
        raise ValueError(f"{spec!r} is not a Hub model id like ORG/NAME")
    return "/".join(parts[:2]), "/".join(parts[2:])


def download_members(spec: str, revision: str | None = None, cache_dir: str | Path | None = None,
                     token: str | None = None, api=None) -> list[Path]:
    """Download (or, with ``HF_HUB_OFFLINE=1``, find in the cache) the members of a Hub repo; their folders.

    The repo is listed first and only member files are fetched: the member file set (``MEMBER_FILES`` +
    ``TRAINING_FILES``) of the folder named (``ORG/NAME/sub``, or the repo root) when it is a member, else of each
    folder directly inside it that holds model.safetensors and config.json. Nothing else the repo holds is downloaded,
    and nothing is downloaded when a chosen file is over its size bound (:func:`check_sizes`) or the repo names a
    path outside itself.
    """
    import glob

    from huggingface_hub import HfApi, constants, snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError, RepositoryNotFoundError, RevisionNotFoundError

    repo_id, sub = split_repo(spec)
    try:
        files = None
        if not constants.HF_HUB_OFFLINE:
            try:
                files = repo_listing(api or HfApi(token=token), repo_id, revision, spec)
            except (RepositoryNotFoundError, RevisionNotFoundError):
                raise
            except _unreachable():  # offline, Hub down, private without a token: the cache may still hold it
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


def _unreachable() -> tuple[type[BaseException], ...]:
    """The errors of a Hub that cannot be reached (offline, down, private without a token): the cache may serve."""
    try:
        from huggingface_hub.utils import httpx  # huggingface_hub >= 1.0 talks httpx
    except ImportError:  # older ones talk requests, whose errors are OSErrors
        return (OSError,)
    return (OSError, httpx.TransportError)


def _member_files(files: list[str], sub: str) -> list[str]:
    """The paths to download from a repo listing: the member file set of ``sub`` (the root if "") when it is a
    member, else of each member folder directly inside it (what :func:`members_in` then finds)."""
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


def repo_listing(api, repo_id: str, revision: str | None, spec: str) -> dict[str, int]:
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
    """The most bytes a member file may have when downloaded (the bounds :func:`read_verified` reads with)."""
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


def download_member(model_id: str, *, revision: str | None = None, cache_dir: str | Path | None = None,
                    token: str | bool | None = None, force_download: bool = False,
                    local_files_only: bool = False) -> Path:
    """The folder of the one member at the root of a Hub repo (``from_pretrained``): its config.json and weights of
    one commit, sizes listed first (nothing over its bound is fetched; offline, the cache only)."""
    from huggingface_hub import HfApi, constants, snapshot_download

    wanted = ["config.json", WEIGHTS]
    if not (local_files_only or constants.HF_HUB_OFFLINE):
        check_sizes(repo_listing(HfApi(token=token), model_id, revision, model_id), wanted, model_id)
    return Path(snapshot_download(model_id, revision=revision, cache_dir=cache_dir, token=token,
                                  force_download=force_download, local_files_only=local_files_only,
                                  allow_patterns=wanted))
