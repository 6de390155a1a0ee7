"""Explain one study: each member's probability per image and for the study, a CAM per member and image, and the
fused ensemble map. One batched CAM pass per member gives the maps, and its probabilities where the member runs on
PyTorch; a member the ensemble runs on an exported graph (:func:`zoo.backends.choose`) is scored by that graph, so
the probabilities are the ones predict.py gives with the same backend.

The demo and ``predict.py --cam-dir`` both call :func:`explain_study`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image
from tqdm.auto import tqdm

from zoo.atomic import atomic_path
from zoo.cam import compute_cams, fuse_cams, overlay
from zoo.data import ImageArray


@dataclass
class StudyExplanation:
    """What the members saw in one study's images."""

    paths: list[str]  # every image given
    readable: list[int]  # positions in ``paths`` of the images that decoded
    image_probs: pd.DataFrame  # one row per readable image (column ``path``), one probability column per member
    member_probs: pd.Series  # member -> study probability (mean over its readable images)
    cams: dict[str, np.ndarray]  # member -> (n_readable, S_member, S_member) maps in [0, 1]
    fused: np.ndarray  # (n_readable, S, S) the probability-weighted fusion at the largest member size
    bases: np.ndarray  # (n_readable, S, S) uint8 preprocessed images at the largest member size, for overlays
    errors: dict[str, str] = field(default_factory=dict)  # unreadable path -> why


def explain_study(ens, paths: list[str], method: str = "gradcam", arrays: dict[int, ImageArray] | None = None,
                  cache_dir: str | None = "", max_gb: float | None = None) -> StudyExplanation:
    """Run every member of ``ens`` over the images of one study (decoded once per member size, into ``cache_dir``
    bounded by ``max_gb``, unless ``arrays`` holds them)."""
    paths = [str(p) for p in paths]
    arrays = arrays or ens.decode(paths, cache_dir=cache_dir, quiet=True, max_gb=max_gb)
    mine = set(paths)
    errors = {p: e for arr in arrays.values() for p, e in arr.errors.items() if p in mine}
    readable = [i for i, p in enumerate(paths) if p not in errors]
    image_probs = pd.DataFrame({"path": [paths[i] for i in readable]})
    cams: dict[str, np.ndarray] = {}
    for m in ens.members:
        if not readable:
            break
        batch = np.asarray(arrays[m.img_size].array[readable])
        cams[m.name], probs = compute_cams(m.model, batch, method, ens.precision)
        runner = ens.choice(m).runner  # the member's backend (zoo.backends): its scores are predict.py's
        image_probs[m.name] = probs if runner is None else runner.predict([batch[:, None]])
    show = max(arrays)
    bases = np.asarray(arrays[show].array[readable]) if readable else np.zeros((0, show, show), np.uint8)
    member_probs = image_probs[ens.names].mean(axis=0) if readable else pd.Series(np.nan, index=ens.names)
    fused = np.stack([fuse_cams([cams[n][j] for n in ens.names], image_probs.loc[j, ens.names].tolist(), show)
                      for j in range(len(readable))]) if readable else np.zeros((0, show, show), np.float32)
    return StudyExplanation(paths, readable, image_probs, member_probs, cams, fused, bases, errors)


def write_cams(ens, image_predictions: pd.DataFrame, out_dir: str | Path, method: str = "gradcam",
               cache_dir: str | None = None, quiet: bool = False, max_gb: float | None = None,
               chunk_size: int | None = None) -> int:
    """One overlay PNG per readable image and member, ``out_dir/<member>/<study id>+<image stem>.png`` (see
    :func:`overlay_names`), explained chunk by chunk and within a chunk study by study (one batched CAM pass per
    member and study, or study part where a study straddles two chunks). The chunks are predict.py's
    (:func:`zoo.sharding.chunks` of the table in its order, ``chunk_size`` images each, default its default): each
    is decoded on its own, from the decoded-image cache entry its prediction filled (``cache_dir``, bounded by
    ``max_gb``), so memory is one chunk's images however large the archive. Returns the number written."""
    from zoo.sharding import DEFAULT_CHUNK_SIZE, chunks

    out_dir = Path(out_dir)
    for m in ens.members:
        (out_dir / m.name).mkdir(parents=True, exist_ok=True)
    table = image_predictions.reset_index(drop=True)
    paths = table["path"].tolist()
    names: dict[int, str] = {}  # row -> its overlays' file name, from its whole study's images
    for sid, idx in table.groupby("id", sort=True).indices.items():
        names.update(zip(idx.tolist(), overlay_names(str(sid), [paths[i] for i in idx])))
    n = 0
    bar = tqdm(total=len(table), desc="CAMs", unit="image", disable=True if quiet else None, leave=False)
    for part in chunks(len(table), chunk_size or DEFAULT_CHUNK_SIZE):
        arrays = ens.decode(paths[part], cache_dir=cache_dir, quiet=True, max_gb=max_gb)  # predict.py's entry
        for idx in table.iloc[part].reset_index(drop=True).groupby("id", sort=True).indices.values():
            study = {size: ImageArray([arr.paths[i] for i in idx], size, arr.read(idx), arr.ok[idx], arr.errors)
                     for size, arr in arrays.items()}
            ex = explain_study(ens, [paths[part.start + i] for i in idx], method, arrays=study)
            for j, i in enumerate(ex.readable):
                for m in ens.members:
                    img = np.asarray(study[m.img_size].array[i])
                    with atomic_path(out_dir / m.name / names[part.start + int(idx[i])]) as tmp:
                        Image.fromarray(overlay(img, ex.cams[m.name][j])).save(tmp, format="PNG")
                    n += 1
            bar.update(len(idx))
        del arrays
    bar.close()
    return n


def overlay_names(study_id: str, paths: list[str]) -> list[str]:
    """File names for the overlays of one study's images, unique across studies and images: the percent-encoded
    study id and image stem joined by ``+`` (which percent-encoding never leaves), ``+2``, ``+3`` ... for a stem that
    repeats within the study. MURA names every study's images image1..N, so the stem alone would overwrite."""
    import hashlib
    from urllib.parse import quote

    out: list[str] = []
    for p in paths:
        base = f"{quote(study_id, safe='')}+{quote(Path(p).stem, safe='')}"
        if len(base) > 200:  # file-name limits (255 bytes): keep a readable head and a digest of the whole
            base = f"{base[:150]}+{hashlib.sha256(base.encode()).hexdigest()[:16]}"
        name, k = base, 1
        while f"{name}.png" in out:
            k += 1
            name = f"{base}+{k}"
        out.append(f"{name}.png")
    return out
