"""Do the heatmaps point at the finding? CAMs checked against ground-truth boxes, and their faithfulness.

For each abnormal image with annotations (COCO boxes, read with ``pycocotools``, matched to images by file name),
per member, per CAM method and for the fused ensemble CAM:

- **pointing game** (Zhang et al. 2018): a hit when the CAM's maximum lies within ``tolerance`` px (15 by
  convention, measured at the stored image's scale) of a box; beside it the chance level, the share of the image
  within that tolerance of a box (what a random point would score). Interval: Wilson over images.
- **energy-based pointing game** (Wang et al. 2020, Score-CAM): the share of the CAM's mass inside the boxes;
  beside it the chance level, the boxes' share of the image (what a uniform map would score). Interval: a bootstrap
  over images of the mean.
- **ROAD** (Rong et al. 2022, ``pytorch_grad_cam.metrics.road.ROADCombined``): the mean over percentiles of
  (logit change when the least relevant pixels are removed - change when the most relevant are removed) / 2, with
  noisy linear imputation; higher is more faithful. On a bounded sample of images (``road_samples``), beside the
  same score for a random map.

Boxes go through the same aspect-preserving resize and centred pad as the model input
(:func:`zoo.data.io.resize_pad`; :func:`pad_geometry` is its geometry), so a box lands where its pixels do.
"""

from __future__ import annotations

import contextlib
import io
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from zoo.stats import LEVEL, describe_localisation, interval, wilson  # noqa: F401  (describe_...: re-exported)

TOLERANCE = 15  # px at the stored image's scale (Zhang et al. 2018)
FUSED = "ensemble (fused)"
VAL_LOCALISATION_LIMIT = 200  # abnormal validation images with boxes scored at the end of training, at most
ROAD_PERCENTILES = (20, 50, 80)  # of pixels removed; three levels keep ROAD's sparse solves affordable on a CPU


@dataclass(frozen=True)
class Geometry:
    """Where a stored (h, w) image lands in the model's (size, size) input: per-axis scale and the pad offsets."""

    h: int
    w: int
    size: int
    sx: float
    sy: float
    left: int
    top: int

    def to_input(self, boxes: np.ndarray) -> np.ndarray:
        """COCO ``[x, y, w, h]`` boxes (stored pixels) -> ``[x0, y0, x1, y1]`` in input pixels."""
        b = np.asarray(boxes, float).reshape(-1, 4)
        return np.stack([b[:, 0] * self.sx + self.left, b[:, 1] * self.sy + self.top,
                         (b[:, 0] + b[:, 2]) * self.sx + self.left, (b[:, 1] + b[:, 3]) * self.sy + self.top], 1)

    def to_stored(self, row: float, col: float) -> tuple[float, float]:
        """Centre of input pixel (row, col) -> (x, y) in stored pixels."""
        return (col + 0.5 - self.left) / self.sx, (row + 0.5 - self.top) / self.sy


def pad_geometry(h: int, w: int, size: int) -> Geometry:
    """The geometry of :func:`zoo.data.io.resize_pad` (long side to ``size``, rounded, centred on a square)."""
    scale = size / max(h, w)
    nh, nw = max(1, round(h * scale)), max(1, round(w * scale))
    return Geometry(h, w, size, nw / w, nh / h, (size - nw) // 2, (size - nh) // 2)


def _box_mask(xyxy: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Pixels (by their centres) inside any ``[x0, y0, x1, y1]`` box, for an array of ``shape``."""
    rows, cols = np.arange(shape[0])[:, None] + 0.5, np.arange(shape[1])[None, :] + 0.5
    mask = np.zeros(shape, bool)
    for x0, y0, x1, y1 in xyxy:
        mask |= (cols >= x0) & (cols <= x1) & (rows >= y0) & (rows <= y1)
    return mask


def _distance_to_boxes(x: np.ndarray, y: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    """Euclidean distance from points to the nearest COCO ``[x, y, w, h]`` box (0 inside one)."""
    d = np.full(np.broadcast(x, y).shape, np.inf)
    for bx, by, bw, bh in np.asarray(boxes, float).reshape(-1, 4):
        dx = np.maximum(np.maximum(bx - x, 0), x - (bx + bw))
        dy = np.maximum(np.maximum(by - y, 0), y - (by + bh))
        d = np.minimum(d, np.hypot(dx, dy))
    return d


def hit_region(boxes: np.ndarray, geo: Geometry, tolerance: float = TOLERANCE) -> np.ndarray:
    """Bool (size, size): the model-input pixels (by their centres) where a CAM's maximum counts as a hit of the
    pointing game (:func:`pointing_hit`): within ``tolerance`` stored pixels of one of the COCO ``boxes``."""
    rows, cols = np.mgrid[0:geo.size, 0:geo.size]
    x, y = geo.to_stored(rows, cols)
    return _distance_to_boxes(x, y, boxes) <= tolerance


def pointing_hit(cam: np.ndarray, boxes: np.ndarray, geo: Geometry, tolerance: float = TOLERANCE) -> bool:
    """Is the CAM's maximum within ``tolerance`` stored pixels of a box? (An all-equal CAM points nowhere: a miss.)"""
    cam = np.asarray(cam, float)
    if not np.isfinite(cam).all() or cam.max() <= cam.min():
        return False
    r, c = np.unravel_index(int(np.argmax(cam)), cam.shape)
    x, y = geo.to_stored(r, c)
    return bool(_distance_to_boxes(np.asarray(x), np.asarray(y), boxes) <= tolerance)


def energy_share(cam: np.ndarray, boxes: np.ndarray, geo: Geometry) -> float:
    """The share of the CAM's mass inside the boxes (NaN for a CAM with no mass)."""
    cam = np.clip(np.asarray(cam, float), 0, None)
    total = cam.sum()
    if total <= 0:
        return float("nan")
    return float(cam[_box_mask(geo.to_input(boxes), cam.shape)].sum() / total)


def chance_levels(boxes: np.ndarray, h: int, w: int, tolerance: float = TOLERANCE) -> tuple[float, float]:
    """``(pointing, energy)`` chance on the stored (h, w) image: the share of its pixels within ``tolerance`` of a
    box (a random point's hit rate) and the share inside the boxes (a uniform map's energy share)."""
    ys, xs = np.mgrid[0:h, 0:w] + 0.5
    d = _distance_to_boxes(xs, ys, boxes)
    return float((d <= tolerance).mean()), float((d <= 0).mean())


def image_scores(cam: np.ndarray, boxes: np.ndarray, h: int, w: int, tolerance: float = TOLERANCE) -> dict:
    """``{"hit", "energy"}`` of one CAM (any square size: the model input's) against the COCO boxes of its stored
    (h, w) image: :func:`pointing_hit` and :func:`energy_share` through the input's resize and pad."""
    geo = pad_geometry(h, w, cam.shape[0])
    return {"hit": pointing_hit(cam, boxes, geo, tolerance), "energy": energy_share(cam, boxes, geo)}


# --- annotations -----------------------------------------------------------------------------------------------

YOLO_NOT_LABELS = ("classes.txt", "train.txt", "val.txt", "test.txt")  # class names and split lists, not boxes


def _is_label_file(f: Path) -> bool:
    """A ``*.txt`` of a YOLO folder that holds boxes: not its class names, split lists or README."""
    return f.name.lower() not in YOLO_NOT_LABELS and not f.name.lower().startswith("readme")


class YoloLabels:
    """The second reader: a YOLO-format folder, one ``STEM.txt`` per image (``class cx cy w h`` per line, centre and
    size normalised to the image's width and height; an empty file: none), under every ``labels/`` folder in ``DIR``
    at any depth (``labels/train/``, Roboflow's ``train/labels/``) or, without one, in ``DIR`` itself
    (``classes.txt``, ``README*.txt`` and the split lists ``train/val/test.txt`` are not labels). Every box is a
    finding, so a folder with more than one class id is refused: its other classes (GRAZPEDWRI-DX's ``text`` side
    markers, ``metal``) are the shortcuts a CAM must not be pulled onto.

    A label file is matched to an image by stem and, among label files of that stem, by the most folders its path
    under ``labels/`` shares with the end of the image's path (``labels/train/p1/image1.txt`` is
    ``.../train/p1/image1.png``'s); two images given one label file, or one image two equally good ones, are refused.
    Boxes come out in stored pixels, as COCO's ``[x, y, w, h]``, through the size of the image they are matched to
    (as decoded: EXIF orientation applied)."""

    def __init__(self, folder: str | Path, flag: str = "--boxes"):
        self.folder = Path(folder)
        self.flag = flag
        roots = sorted(d for d in self.folder.rglob("labels") if d.is_dir()) or [self.folder]
        found: dict[Path, Path] = {}  # label file -> the labels folder its relative path is taken under
        for root in roots:
            for f in sorted(root.rglob("*.txt")):
                if _is_label_file(f):
                    found.setdefault(f, root)  # a labels/ inside a labels/: the outer one's relative path
        self.files = sorted(found)
        if not self.files:
            raise ValueError(f"{flag} {self.folder}: a folder, but no YOLO labels in it (labels/*.txt, one "
                             "'class cx cy w h' line per box); give a COCO json or a YOLO folder")
        self.boxes: dict[tuple[str, ...], np.ndarray] = {}  # relative path parts (no suffix) -> (k, 4) cx, cy, w, h
        self._by_stem: dict[str, list[tuple[str, ...]]] = {}
        classes: dict[int, Path] = {}  # class id -> the first file with it
        for f in self.files:
            rows = []
            for n, line in enumerate(f.read_text().splitlines(), 1):
                if not line.strip():
                    continue
                try:
                    values = [float(v) for v in line.split()]
                except ValueError:
                    values = []
                if len(values) != 5 or not all(0 <= v <= 1 for v in values[1:]) or values[0] != int(values[0]):
                    raise ValueError(f"{flag} {f}:{n}: not a YOLO box line 'class cx cy w h' with normalised "
                                     f"values in [0, 1]: {line.strip()[:80]!r}")
                classes.setdefault(int(values[0]), f)
                rows.append(values[1:])
            key = f.relative_to(found[f]).with_suffix("").parts
            self.boxes[key] = np.array(rows, float).reshape(-1, 4)
            self._by_stem.setdefault(f.stem, []).append(key)
        if len(classes) > 1:
            raise ValueError(
                f"{flag} {self.folder}: its labels hold {len(classes)} class ids ("
                + ", ".join(f"{c} in {classes[c].relative_to(self.folder)}" for c in sorted(classes))
                + "); every box is taken as a finding, so keep only the finding class(es), as one id, and delete the "
                "other classes' lines (side markers, text, metal: a CAM must not be pulled onto them)")
        self.dataset = {"images": [{"file_name": "/".join(k)} for k in self.boxes]}  # what a summary counts

    def _label_for(self, path: str) -> tuple[str, ...] | None:
        """The label file (its relative parts) for the image at ``path``: by stem, then most shared folders."""
        parts = Path(path).with_suffix("").parts
        keys = self._by_stem.get(Path(path).stem, [])
        if len(keys) <= 1:
            return keys[0] if keys else None

        def shared(key: tuple[str, ...]) -> int:
            n = 0
            while n < min(len(key), len(parts)) and key[-1 - n] == parts[-1 - n]:
                n += 1
            return n

        best = max(map(shared, keys))
        tied = [k for k in keys if shared(k) == best]
        if len(tied) > 1:
            raise ValueError(f"{self.flag} {self.folder}: {path} matches label files " + " and ".join(
                "/".join(k) + ".txt" for k in tied) + " equally; put each label file at its image's relative path "
                "under labels/ (labels/<the image's folders>/STEM.txt)")
        return tied[0]

    def boxes_by_image(self, paths: list[str]) -> dict[str, tuple[np.ndarray, int, int]]:
        """:func:`boxes_by_image` for these labels: ``path -> (COCO boxes (k, 4), height, width)``. An image that
        cannot be read gets none (the readers report it)."""
        from zoo.data.io import ImageReadError

        out, claimed = {}, {}
        for p in paths:
            key = self._label_for(p)
            if key is None:
                continue
            if key in claimed and claimed[key] != p:
                raise ValueError(f"{self.flag} {self.folder}: {claimed[key]} and {p} both match the label file "
                                 f"{'/'.join(key)}.txt (labels are matched by stem and their folders under labels/); "
                                 "put each image's labels at its relative path (labels/<the image's folders>/STEM.txt)")
            claimed[key] = p
            b = self.boxes[key]
            b = b[(b[:, 2:] > 0).all(axis=1)]  # as for COCO: a box without area marks nothing
            if not len(b):
                continue
            try:
                h, w = _stored_size(p)
            except (ImageReadError, OSError):
                continue
            out[p] = (np.stack([(b[:, 0] - b[:, 2] / 2) * w, (b[:, 1] - b[:, 3] / 2) * h, b[:, 2] * w, b[:, 3] * h],
                               1), h, w)
        return out


def _stored_size(path: str | Path) -> tuple[int, int]:
    """(height, width) of an image as :func:`zoo.data.io.decode` gives it: from the header (EXIF rotation applied)
    where Pillow reads it, else by decoding (DICOM)."""
    from PIL import Image

    try:
        with Image.open(path) as img:
            w, h = img.size
            return (w, h) if img.getexif().get(0x0112, 1) in (5, 6, 7, 8) else (h, w)
    except Exception:  # DICOM and what else Pillow does not know: the project's own reader
        from zoo.data.io import read_grayscale

        return tuple(read_grayscale(path).shape)  # type: ignore[return-value]


def annotations_record(path: str | Path) -> dict:
    """What config.json and the resume fingerprint record of an annotations source: its name and SHA-256 (of the
    file; of a YOLO folder, every label file's relative path and content)."""
    import hashlib

    path = Path(path)
    if not path.is_dir():
        return {"file": path.name, "sha256": hashlib.sha256(path.read_bytes()).hexdigest()}
    h = hashlib.sha256()
    for f in YoloLabels(path).files:
        h.update(f.relative_to(path).as_posix().encode() + b"\0" + f.read_bytes() + b"\0")
    return {"file": path.name, "sha256": h.hexdigest()}


def load_annotations(path: str | Path, flag: str = "--annotations"):
    """A ``pycocotools.coco.COCO`` for a COCO json (boxes and/or polygons), or :class:`YoloLabels` for a folder of
    YOLO labels; one clear error, naming ``flag``, if it is neither."""
    path = Path(path)
    if path.is_dir():
        return YoloLabels(path, flag)
    try:
        from pycocotools.coco import COCO
    except ImportError as exc:
        raise ImportError(f"{flag} needs pycocotools: pip install 'bone-zoo[eval]'") from exc
    if not path.is_file():
        raise FileNotFoundError(f"{flag} {path}: no such file")
    try:
        with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints its progress
            return COCO(str(path))
    except Exception as exc:
        raise ValueError(f"{flag} {path}: not a COCO annotation file ({exc})") from exc


ANNOTATIONS_FILE = "annotations.coco.json"  # a data folder's own boxes (FracAtlas' layout, the synthetic set)


def data_annotations(root: str | Path | None) -> Path | None:
    """The data folder's own COCO file (``ROOT/annotations.coco.json``), or None where it has none."""
    f = Path(root) / ANNOTATIONS_FILE if root is not None else None
    return f if f is not None and f.is_file() else None


def boxes_by_image(coco, paths: list[str], root: str | Path | None = None) -> dict[str, tuple[np.ndarray, int, int]]:
    """``path -> (boxes [x, y, w, h] (k, 4), height, width)`` for each path with annotations. An image matches on its
    path relative to ``root`` (COCO's ``file_name``, e.g. ``test/HAND_x_image1.jpg``), else on its base name; with
    :class:`YoloLabels`, on its stem."""
    if isinstance(coco, YoloLabels):
        return coco.boxes_by_image(paths)
    by_name: dict[str, dict] = {}
    for img in coco.dataset.get("images", []):
        by_name.setdefault(img["file_name"].replace("\\", "/"), img)
        by_name.setdefault(Path(img["file_name"]).name, img)
    out = {}
    for p in paths:
        rel = None
        if root is not None:
            with contextlib.suppress(ValueError):
                rel = Path(p).resolve().relative_to(Path(root).resolve()).as_posix()
        img = by_name.get(rel) if rel else None
        img = img or by_name.get(Path(p).name)
        if img is None:
            continue
        anns = coco.loadAnns(coco.getAnnIds(imgIds=[img["id"]], iscrowd=None))
        boxes = np.array([a["bbox"] for a in anns if "bbox" in a and a["bbox"][2] > 0 and a["bbox"][3] > 0], float)
        if len(boxes):
            out[p] = (boxes.reshape(-1, 4), int(img["height"]), int(img["width"]))
    return out


# --- the evaluation ----------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class LocalisationOptions:
    """How CAMs are scored against the boxes (``--loc-methods``, ``--road-samples``, ``--pointing-tolerance``) and
    where their images are decoded (the run's ``--cache-dir`` and ``--cache-max-gb``)."""

    methods: tuple[str, ...] | None = None  # CAM methods (zoo.cam); None: every one
    road_samples: int = 8  # ROAD on the first N annotated images per member and method (0: off)
    tolerance: float = TOLERANCE  # pointing-game tolerance, stored-image pixels
    cache_dir: str | None = None  # decoded-image cache (zoo.data.load_images); "" = in memory
    max_gb: float | None = None  # its bound on disk (None: BONE_ZOO_CACHE_MAX_GB or 20)
    quiet: bool = False  # no progress bar
    seed: int = 0  # the random maps ROAD is compared with


def road_scores(model, images_u8: np.ndarray, cams: np.ndarray,
                percentiles: tuple[int, ...] = ROAD_PERCENTILES) -> np.ndarray:
    """ROADCombined per image (logit units; higher = more faithful) for uint8 (n, S, S) inputs and their CAMs."""
    import torch
    from pytorch_grad_cam.metrics.road import ROADCombined
    from pytorch_grad_cam.utils.model_targets import BinaryClassifierOutputTarget

    from zoo.data.transforms import to_input

    device = next(model.parameters()).device
    x = to_input(torch.from_numpy(np.asarray(images_u8))[:, None].to(device), model.mean, model.std).contiguous()
    model.eval()
    targets = [BinaryClassifierOutputTarget(1)] * len(x)
    with torch.no_grad():
        return np.asarray(ROADCombined(percentiles=list(percentiles))(x, np.asarray(cams, np.float32), targets,
                                                                       model), float).reshape(-1)


def localise(ens, images: pd.DataFrame, coco, root: str | Path | None = None,
             options: LocalisationOptions | None = None) -> pd.DataFrame:
    """One row per (abnormal annotated image, member or the fused CAM, method): ``hit``, ``energy``, their chance
    levels and, on the first ``options.road_samples`` images, ``road`` and ``road_random`` (a random map's ROAD).

    ``images`` has ``path, id, label`` (label = the study's); only label-1 images with boxes are scored."""
    from tqdm.auto import tqdm

    from zoo.cam import LABELS
    from zoo.data import ImageArray
    from zoo.explain import explain_study

    opt = options or LocalisationOptions()
    methods = list(opt.methods or LABELS.values())
    pos = images[images["label"] == 1]
    boxes = boxes_by_image(coco, pos["path"].tolist(), root)
    pos = pos[pos["path"].isin(boxes)]
    rows: list[dict] = []
    if pos.empty:
        return pd.DataFrame(rows)
    paths = pos["path"].tolist()
    arrays = ens.decode(paths, cache_dir=opt.cache_dir, quiet=True, max_gb=opt.max_gb)
    road_left = {(m, meth): opt.road_samples for m in ens.names for meth in methods}
    rng = np.random.default_rng(opt.seed)
    ids = pos["id"].tolist()
    groups = pos.reset_index(drop=True).groupby("id", sort=True).indices
    for idx in tqdm(groups.values(), desc="localisation", unit="study", disable=True if opt.quiet else None,
                    leave=False):
        study = {size: ImageArray([arr.paths[i] for i in idx], size, arr.read(idx), arr.ok[idx], arr.errors)
                 for size, arr in arrays.items()}
        for method in methods:
            ex = explain_study(ens, [paths[i] for i in idx], method, arrays=study)
            for j, i in enumerate(ex.readable):
                path = ex.paths[i]
                b, h, w = boxes[path]
                chance_point, chance_energy = chance_levels(b, h, w, opt.tolerance)
                for name in [*ens.names, FUSED]:
                    cam = ex.fused[j] if name == FUSED else ex.cams[name][j]
                    row = {"path": path, "id": ids[idx[0]], "member": name, "method": method,
                           **image_scores(cam, b, h, w, opt.tolerance),
                           "chance_point": chance_point, "chance_energy": chance_energy,
                           "road": np.nan, "road_random": np.nan}
                    if name != FUSED and road_left[(name, method)] > 0:
                        m = next(mm for mm in ens.members if mm.name == name)
                        img = np.asarray(study[m.img_size].array[i])[None]
                        noise = rng.random(cam.shape).astype(np.float32)[None]
                        r = road_scores(m.model, np.concatenate([img, img]), np.concatenate([cam[None], noise]))
                        row["road"], row["road_random"] = float(r[0]), float(r[1])
                        road_left[(name, method)] -= 1
                    rows.append(row)
    return pd.DataFrame(rows)


def validation_localisation(model, read, paths: list[str], labels, coco, root: str | Path | None = None,
                            method: str = "gradcam", tolerance: float = TOLERANCE, batch: int = 32,
                            limit: int = VAL_LOCALISATION_LIMIT) -> dict | None:
    """One member's pointing game and energy share (each with its interval and chance level: :func:`summarise`) on
    the abnormal images among ``paths`` (``labels`` >= 0.5) that ``coco`` has boxes for; ``read(indices)`` gives
    the images ``paths[indices]`` (uint8 (n, S, S), the model's input size; training: :meth:`ImageArray.read`).
    Its CAMs are :func:`zoo.cam.compute_cams` (what the demo and the evaluation draw), ``batch`` images at a time, on
    the first ``limit`` such images (the cost stays bounded on a large set; ``available`` says how many there were).
    None when no such image has a box: nothing to score."""
    from zoo.cam import compute_cams

    boxes = boxes_by_image(coco, [p for p, y in zip(paths, labels, strict=True) if y >= 0.5], root)
    pick = [i for i, p in enumerate(paths) if p in boxes and labels[i] >= 0.5]
    if not pick:
        return None
    available, pick = len(pick), pick[:limit]
    records = []
    for start in range(0, len(pick), batch):
        chunk = pick[start:start + batch]
        cams, _ = compute_cams(model, np.asarray(read(np.asarray(chunk))), method)
        for i, cam in zip(chunk, cams, strict=True):
            b, h, w = boxes[paths[i]]
            chance_point, chance_energy = chance_levels(b, h, w, tolerance)
            records.append({"path": paths[i], "member": "", "method": method, **image_scores(cam, b, h, w, tolerance),
                            "chance_point": chance_point, "chance_energy": chance_energy, "road": np.nan,
                            "road_random": np.nan})
    row = summarise(pd.DataFrame(records)).iloc[0]
    keys = ("pointing", "pointing_lo", "pointing_hi", "pointing_chance", "energy", "energy_lo", "energy_hi",
            "energy_chance")
    return {"method": method, "tolerance": float(tolerance), "level": LEVEL, "images": int(row["images"]),
            "available": available,
            **{k: float(row[k]) for k in keys}}


def _mean_ci(x: np.ndarray, level: float = LEVEL, seed: int = 0) -> tuple[float, float, float]:
    """Mean and bootstrap percentile interval (over images) of the finite values of ``x``."""
    from scipy.stats import bootstrap

    x = np.asarray(x, float)
    x = x[np.isfinite(x)]
    if len(x) == 0:
        return float("nan"), float("nan"), float("nan")
    if len(x) == 1 or np.all(x == x[0]):
        return float(x.mean()), float(x[0]), float(x[0])
    res = bootstrap((x,), np.mean, confidence_level=level, n_resamples=2000, method="percentile",
                    random_state=np.random.default_rng(seed))
    return float(x.mean()), float(res.confidence_interval.low), float(res.confidence_interval.high)


def summarise(records: pd.DataFrame, level: float = LEVEL) -> pd.DataFrame:
    """Per (member, method): images, pointing game with its Wilson interval and chance, energy share with its
    bootstrap interval and chance, and ROAD (with a random map's) on the sampled images."""
    rows = []
    for (member, method), g in records.groupby(["member", "method"], sort=False):
        k, n = int(g["hit"].sum()), len(g)
        plo, phi = wilson(k, n, level)
        e, elo, ehi = _mean_ci(g["energy"].to_numpy())
        r, rlo, rhi = _mean_ci(g["road"].to_numpy())
        rows.append({"member": member, "method": method, "images": n, "pointing": k / n if n else np.nan,
                     "pointing_lo": plo, "pointing_hi": phi, "pointing_chance": g["chance_point"].mean(),
                     "energy": e, "energy_lo": elo, "energy_hi": ehi, "energy_chance": g["chance_energy"].mean(),
                     "road": r, "road_lo": rlo, "road_hi": rhi, "road_random": float(np.nanmean(g["road_random"]))
                     if g["road_random"].notna().any() else np.nan, "road_images": int(g["road"].notna().sum())})
    return pd.DataFrame(rows)


def _f(v: float) -> str:
    return "" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.3f}"


def localisation_lines(summary: pd.DataFrame, tolerance: float = TOLERANCE, figure: str | None = None) -> list[str]:
    """The report section for :func:`summarise` (and the figure grid, when one was drawn)."""
    if summary.empty:
        return ["## Localisation against ground truth", "", "No abnormal test image has an annotation matched by "
                "file name: nothing to score.", ""]
    show = pd.DataFrame({
        "member": summary["member"], "method": summary["method"], "images": summary["images"].astype(str),
        "pointing": summary["pointing"].map(_f),
        f"{LEVEL:.0%} CI": [interval(a, b) for a, b in zip(summary["pointing_lo"], summary["pointing_hi"],
                                                           strict=True)],
        "chance": summary["pointing_chance"].map(_f), "energy": summary["energy"].map(_f),
        f"energy {LEVEL:.0%} CI": [interval(a, b) for a, b in zip(summary["energy_lo"], summary["energy_hi"],
                                                                  strict=True)],
        "energy chance": summary["energy_chance"].map(_f), "ROAD": summary["road"].map(_f),
        f"ROAD {LEVEL:.0%} CI": [interval(a, b) for a, b in zip(summary["road_lo"], summary["road_hi"], strict=True)],
        "ROAD random map": summary["road_random"].map(_f), "ROAD images": summary["road_images"].astype(str)})
    lines = ["## Localisation against ground truth", "",
             f"Abnormal test images with annotated boxes. **pointing**: share of images whose CAM maximum lies within "
             f"{tolerance:g} px (stored-image scale) of a box, Wilson interval; **chance**: share of the image within "
             f"{tolerance:g} px of a box. **energy**: mean share of CAM mass inside the boxes, bootstrap interval "
             "over images; **energy chance**: the boxes' share of the image. **ROAD** (ROADCombined, percentiles "
             f"{', '.join(map(str, ROAD_PERCENTILES))}; logit units, higher = more faithful) on the first "
             "images of each member and method, beside a random map's. Boxes are mapped through the model input's "
             f"resize and pad. `{FUSED}` is the probability-weighted fusion of the members' CAMs.", "",
             show.to_markdown(index=False, disable_numparse=True), ""]
    if figure:
        lines += [f"![Best and worst localisations]({figure})", ""]
    return lines


def plot_extremes(ens, records: pd.DataFrame, path: str | Path, boxes: dict[str, tuple[np.ndarray, int, int]],
                  options: LocalisationOptions | None = None, *, method: str | None = None, member: str = FUSED,
                  n: int = 4) -> Path | None:
    """A grid of the ``n`` best and ``n`` worst images by energy share (``member``'s CAM of ``method``), CAM over
    the image with its ground-truth ``boxes`` (:func:`boxes_by_image`) drawn; None when there is nothing to draw."""
    from matplotlib.figure import Figure
    from matplotlib.patches import Rectangle

    from zoo.atomic import save_figure
    from zoo.cam import overlay
    from zoo.explain import explain_study

    sel = records[(records["member"] == member) & records["energy"].notna()]
    method = method or (sel["method"].iloc[0] if len(sel) else None)
    sel = sel[sel["method"] == method].sort_values("energy", ascending=False)
    if sel.empty:
        return None
    picks = list(dict.fromkeys([*sel["path"].head(n), *sel["path"].tail(n)[::-1]]))
    opt = options or LocalisationOptions()
    fig = Figure(figsize=(2.2 * min(len(picks), n), 2.4 * math.ceil(len(picks) / n)), dpi=110)
    axes = np.atleast_1d(fig.subplots(math.ceil(len(picks) / n), min(len(picks), n))).ravel()
    for ax, p in zip(axes, picks, strict=False):
        ex = explain_study(ens, [p], method, cache_dir=opt.cache_dir, max_gb=opt.max_gb)
        if not ex.readable:
            continue
        cam = ex.fused[0] if member == FUSED else ex.cams[member][0]
        base = ex.bases[0]
        ax.imshow(overlay(base, cam))
        b, h, w = boxes[p]
        for x0, y0, x1, y1 in pad_geometry(h, w, base.shape[0]).to_input(b):
            ax.add_patch(Rectangle((x0, y0), x1 - x0, y1 - y0, fill=False, ec="lime", lw=1.2))
        r = sel[sel["path"] == p].iloc[0]
        ax.set_title(f"{Path(p).stem[:18]}\nenergy {r['energy']:.2f} {'hit' if r['hit'] else 'miss'}", fontsize=6)
    for ax in axes:
        ax.axis("off")
    fig.suptitle(f"{member}, {method}: best (top) and worst (bottom) energy share; boxes = ground truth", fontsize=7)
    fig.tight_layout()
    return save_figure(fig, path)


def localisation_report(ens, images: pd.DataFrame, coco, root, out_dir: str | Path,
                        options: LocalisationOptions | None = None) -> list[str]:
    """Score the CAMs of ``images`` (``path, id, label``) against ``coco``; write ``localisation.csv`` (the
    summary), ``localisation_images.csv`` (one row per image, member and method) and ``localisation.png`` (best and
    worst images of the fused CAM) into ``out_dir``; return the report section."""
    from zoo.atomic import write_csv

    out_dir, opt = Path(out_dir), options or LocalisationOptions()
    records = localise(ens, images, coco, root, opt)
    if records.empty:
        return localisation_lines(pd.DataFrame(), opt.tolerance)
    summary = summarise(records)
    write_csv(records, out_dir / "localisation_images.csv")
    write_csv(summary, out_dir / "localisation.csv")
    boxes = boxes_by_image(coco, records["path"].unique().tolist(), root)
    fig = plot_extremes(ens, records, out_dir / "localisation.png", boxes, opt)
    return localisation_lines(summary, opt.tolerance, fig.name if fig else None)
