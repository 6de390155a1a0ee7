"""A deterministic generator of radiograph-like studies in the competition layout.

Bones are bright rods and ellipses (cortex brighter than the medulla) on darker soft tissue, with noise, blur and an
L/R side marker. Abnormal studies carry one finding in every view: a fracture line, a metal implant (plate and
screws) or a displaced bone. Studies have 1-4 images; ids are ``HAND|WRIST|FOREARM_<10 hex>``; some training labels
are empty (written as ``NA`` or blank, as the competition did). Used by the tests and by the out-of-the-box run.
It is *synthetic*: numbers on it say the pipeline works, not that a model reads X-rays.
"""

from __future__ import annotations

import json
import math
import os
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image, ImageDraw, ImageFilter, ImageFont

PARTS = ("HAND", "WRIST", "FOREARM")
FINDINGS = ("fracture", "implant", "displaced")
VERSION = 4  # 3: png16 images use the full 16-bit range; 4: annotations.coco.json (the findings' boxes)


@dataclass(frozen=True)
class SyntheticSpec:
    n_train: int = 320  # studies
    n_test: int = 80
    size: int = 160  # long side of the images, px
    abnormal_fraction: float = 0.4
    unlabelled_fraction: float = 0.08
    seed: int = 0
    version: int = VERSION


Seg = tuple[tuple[float, float], tuple[float, float], float]  # (p0, p1, width) in unit coordinates


def _bones(part: str, rng: np.random.Generator) -> tuple[list[Seg], list[tuple[float, float, float, float]]]:
    """Long bones as segments and small bones as ellipses (cx, cy, rx, ry), unit coordinates, distal end at top."""
    j = lambda s=0.015: float(rng.normal(0, s))  # noqa: E731
    rods: list[Seg] = []
    blobs: list[tuple[float, float, float, float]] = []
    if part == "FOREARM":
        rods += [((0.40 + j(), 0.04), (0.42 + j(), 0.96), 0.085), ((0.60 + j(), 0.06), (0.58 + j(), 0.96), 0.07)]
    elif part == "WRIST":
        rods += [((0.40 + j(), 0.62), (0.41 + j(), 0.98), 0.11), ((0.62 + j(), 0.64), (0.61 + j(), 0.98), 0.08)]
        for cx, cy in ((0.38, 0.52), (0.48, 0.50), (0.58, 0.51), (0.66, 0.47), (0.36, 0.42), (0.46, 0.41),
                       (0.56, 0.41), (0.64, 0.38)):
            blobs.append((cx + j(0.01), cy + j(0.01), 0.045 + j(0.005), 0.04 + j(0.005)))
        for k in range(5):
            x = 0.30 + 0.1 * k + j()
            rods.append(((x, 0.33), (x + (k - 2) * 0.03, 0.02), 0.05))
    else:  # HAND
        for k in range(5):
            base = (0.36 + 0.08 * k + j(), 0.85)
            ang = math.radians((k - 2) * 9 + j(2))
            length = 0.3 if k else 0.22
            tip = (base[0] + math.sin(ang) * length, base[1] - math.cos(ang) * length)
            rods.append((base, tip, 0.055))
            seg_len, start = 0.13, tip
            for _ in range(2 if k == 0 else 3):
                end = (start[0] + math.sin(ang) * seg_len, start[1] - math.cos(ang) * seg_len - 0.02)
                rods.append(((start[0], start[1] - 0.02), end, 0.04))
                start, seg_len = end, seg_len * 0.75
        for cx, cy in ((0.42, 0.92), (0.52, 0.93), (0.62, 0.92)):
            blobs.append((cx + j(0.01), cy + j(0.01), 0.05, 0.035))
    return rods, blobs


def _line(draw: ImageDraw.ImageDraw, seg: Seg, w: int, h: int, fill: int, scale: float = 1.0) -> None:
    (x0, y0), (x1, y1), width = seg
    draw.line([(x0 * w, y0 * h), (x1 * w, y1 * h)], fill=fill, width=max(1, round(width * scale * w)))
    r = width * scale * w / 2
    for x, y in ((x0, y0), (x1, y1)):  # rounded ends (joints)
        draw.ellipse([x * w - r * 1.15, y * h - r * 1.15, x * w + r * 1.15, y * h + r * 1.15], fill=fill)


def _split_seg(seg: Seg, t: float) -> tuple[Seg, Seg]:
    (x0, y0), (x1, y1), width = seg
    mid = (x0 + (x1 - x0) * t, y0 + (y1 - y0) * t)
    return ((x0, y0), mid, width), (mid, (x1, y1), width)


def _pose(part: str, finding: str | None, rng: np.random.Generator, size: int):
    """Image width and height, the bones, the target bone's index and where along it the finding sits (a displaced
    bone is already split in two, its far piece shifted and angled)."""
    aspect = rng.uniform(0.7, 1.0)
    h = size
    w = max(32, round(size * aspect))
    rods, blobs = _bones(part, rng)
    target = int(rng.integers(len(rods)))
    t = float(rng.uniform(0.35, 0.65))
    if finding == "displaced":  # the target bone in two pieces, the far piece shifted and angled
        a, b = _split_seg(rods[target], t)
        shift = rods[target][2] * rng.choice([-1.6, 1.6])
        (bx0, by0), (bx1, by1), bw = b
        rods[target] = a
        rods.append(((bx0 + shift, by0 + 0.02), (bx1 + shift * 1.8, by1), bw))
    return w, h, rods, blobs, target, t


def _fracture(d: ImageDraw.ImageDraw, rod: Seg, t: float, w: int, h: int, size: int,
              rng: np.random.Generator, lesion: ImageDraw.ImageDraw) -> None:
    """A dark, slightly oblique gap across ``rod`` at ``t`` (the same stroke, bright, on ``lesion``)."""
    (x0, y0), (x1, y1), bw = rod
    cx, cy = x0 + (x1 - x0) * t, y0 + (y1 - y0) * t
    ang = math.atan2(y1 - y0, x1 - x0) + math.pi / 2 + rng.uniform(-0.5, 0.5)
    half = bw * 0.9
    dx, dy = math.cos(ang) * half, math.sin(ang) * half
    pts = [((cx - dx) * w, (cy - dy) * h), (cx * w + rng.normal(0, 1.5), cy * h + rng.normal(0, 1.5)),
           ((cx + dx) * w, (cy + dy) * h)]
    d.line(pts, fill=25, width=max(2, round(size * 0.045)))
    lesion.line(pts, fill=255, width=max(2, round(size * 0.045)))


def _implant(metal: Image.Image, rod: Seg, w: int, h: int, size: int) -> None:
    """A plate along ``rod`` with screws through it, drawn on ``metal``."""
    (x0, y0), (x1, y1), bw = rod
    md = ImageDraw.Draw(metal)
    p0 = (x0 + (x1 - x0) * 0.2, y0 + (y1 - y0) * 0.2)
    p1 = (x0 + (x1 - x0) * 0.8, y0 + (y1 - y0) * 0.8)
    off = bw * 0.55
    md.line([((p0[0] + off) * w, p0[1] * h), ((p1[0] + off) * w, p1[1] * h)], fill=255,
            width=max(2, round(size * 0.025)))
    for k in range(4):
        s = 0.2 + 0.6 * k / 3
        sx, sy = x0 + (x1 - x0) * s, y0 + (y1 - y0) * s
        md.line([((sx - bw * 0.6) * w, sy * h), ((sx + off) * w, sy * h)], fill=255,
                width=max(1, round(size * 0.012)))


def _film(pil: Image.Image, lesion: Image.Image, w: int, h: int, size: int, rng: np.random.Generator
          ) -> tuple[np.ndarray, Image.Image]:
    """What the acquisition adds: an L/R marker in a top corner, rotation, a mirror half the time, blur and noise;
    and the finding's mask ``lesion`` through the same rotation and mirror."""
    marker = ImageDraw.Draw(pil)
    font = ImageFont.load_default(size=max(8, size // 10))
    corner = (w * rng.uniform(0.03, 0.1), h * rng.uniform(0.03, 0.08))
    if rng.random() < 0.5:
        corner = (w * rng.uniform(0.8, 0.88), corner[1])
    marker.text(corner, str(rng.choice(["L", "R"])), fill=250, font=font)
    angle = float(rng.uniform(-20, 20))
    pil = pil.rotate(angle, resample=Image.Resampling.BILINEAR, fillcolor=int(0.06 * 255))
    lesion = lesion.rotate(angle, resample=Image.Resampling.NEAREST, fillcolor=0)
    if rng.random() < 0.5:
        pil = pil.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        lesion = lesion.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    pil = pil.filter(ImageFilter.GaussianBlur(0.6))
    out = np.asarray(pil, np.float32) / 255 + rng.normal(0, 0.025, (h, w)).astype(np.float32)
    return np.clip(out, 0, 1), lesion


def _render(part: str, finding: str | None, rng: np.random.Generator, size: int) -> np.ndarray:
    return _render_boxed(part, finding, rng, size)[0]


def _render_boxed(part: str, finding: str | None, rng: np.random.Generator, size: int
                  ) -> tuple[np.ndarray, list[float] | None]:
    """One view: soft tissue, bones (cortex brighter than the medulla), the finding, then :func:`_film`; and the
    finding's COCO box ``[x, y, w, h]`` (None without a finding), drawn as a lesion mask that goes through the
    image's own rotation and flip."""
    w, h, rods, blobs, target, t = _pose(part, finding, rng, size)
    tissue = Image.new("L", (w, h), 0)
    ImageDraw.Draw(tissue).ellipse([w * 0.12, -h * 0.1, w * 0.88, h * 1.1], fill=255)
    tissue = tissue.filter(ImageFilter.GaussianBlur(size / 14))
    bone = Image.new("L", (w, h), 0)
    d = ImageDraw.Draw(bone)
    for seg in rods:
        _line(d, seg, w, h, 235)  # cortex
    for seg in rods:
        _line(d, seg, w, h, 170, scale=0.5)  # medulla
    for cx, cy, rx, ry in blobs:
        d.ellipse([(cx - rx) * w, (cy - ry) * h, (cx + rx) * w, (cy + ry) * h], fill=215, outline=240)
    metal = Image.new("L", (w, h), 0)
    lesion = Image.new("L", (w, h), 0)  # where the finding is, for its box
    if finding == "displaced":  # the break: from the near piece's end to the far piece's start
        _line(ImageDraw.Draw(lesion), (rods[target][1], rods[-1][0], rods[target][2] * 2.2), w, h, 255)
    if finding == "fracture":
        _fracture(d, rods[target], t, w, h, size, rng, ImageDraw.Draw(lesion))
    elif finding == "implant":
        _implant(metal, rods[target], w, h, size)
        lesion = metal.copy()
    img = 0.06 + 0.22 * np.asarray(tissue, np.float32) / 255 + 0.5 * np.asarray(bone, np.float32) / 255
    if finding is not None:  # soft-tissue swelling around the finding, as in real injuries
        (x0, y0), (x1, y1), _ = rods[target]
        cx, cy = (x0 + (x1 - x0) * t) * w, (y0 + (y1 - y0) * t) * h
        yy, xx = np.mgrid[0:h, 0:w]
        img += 0.12 * np.exp(-((xx - cx) ** 2 + (yy - cy) ** 2) / (2 * (0.12 * size) ** 2)).astype(np.float32)
    img = np.maximum(img, np.asarray(metal, np.float32) / 255)
    out, lesion = _film(Image.fromarray(np.clip(img * 255, 0, 255).astype(np.uint8)), lesion, w, h, size, rng)
    bbox = lesion.getbbox() if finding is not None else None
    return out, None if bbox is None else [float(bbox[0]), float(bbox[1]), float(bbox[2] - bbox[0]),
                                           float(bbox[3] - bbox[1])]


def _save(img: np.ndarray, path: Path, fmt: str) -> Path:
    if fmt == "png16":  # a 16-bit PNG over its full range (read by its declared depth, as a 16-bit export is)
        Image.fromarray((img * 65535).astype(np.uint16)).save(path := path.with_suffix(".png"))
    elif fmt == "jpg":
        Image.fromarray((img * 255).astype(np.uint8)).save(path := path.with_suffix(".jpg"), quality=92)
    else:
        Image.fromarray((img * 255).astype(np.uint8)).save(path := path.with_suffix(".png"))
    return path


def generate(root: str | Path, spec: SyntheticSpec = SyntheticSpec()) -> Path:
    """Write the dataset under ``root`` (train/, test/, train.csv, test_labels.csv, annotations.coco.json: each
    finding's box, synthetic.json)."""
    root = Path(root)
    rng = np.random.default_rng(spec.seed)
    used: set[str] = set()
    coco: dict = {"images": [], "annotations": [], "categories": [{"id": 1, "name": "finding"}]}
    for split, n in (("train", spec.n_train), ("test", spec.n_test)):
        (root / split).mkdir(parents=True, exist_ok=True)
        rows = []
        for _ in range(n):
            part = str(rng.choice(PARTS))
            study = f"{part}_{rng.bytes(5).hex()}"
            while study in used:
                study = f"{part}_{rng.bytes(5).hex()}"
            used.add(study)
            abnormal = bool(rng.random() < spec.abnormal_fraction)
            finding = str(rng.choice(FINDINGS)) if abnormal else None
            n_img = int(rng.choice([1, 2, 3, 4], p=[0.3, 0.35, 0.2, 0.15]))
            for k in range(1, n_img + 1):
                fmt = str(rng.choice(["png", "png16", "jpg"], p=[0.7, 0.15, 0.15]))
                img, box = _render_boxed(part, finding, rng, spec.size)
                path = _save(img, root / split / f"{study}_image{k}", fmt)
                if box is not None:
                    i = len(coco["images"]) + 1
                    coco["images"].append({"id": i, "file_name": f"{split}/{path.name}", "height": img.shape[0],
                                           "width": img.shape[1]})
                    coco["annotations"].append({"id": i, "image_id": i, "category_id": 1, "bbox": box,
                                                "area": box[2] * box[3], "iscrowd": 0})
            label = str(int(abnormal))
            if split == "train" and rng.random() < spec.unlabelled_fraction:
                label = str(rng.choice(["NA", ""]))
            rows.append((study, label))
        csv = root / ("train.csv" if split == "train" else "test_labels.csv")
        pd.DataFrame(rows, columns=["id", "label"]).sort_values("id").to_csv(csv, index=False)
    (root / "annotations.coco.json").write_text(json.dumps(coco))
    (root / "synthetic.json").write_text(json.dumps(asdict(spec), indent=2))
    return root


def ensure_synthetic(root: str | Path, spec: SyntheticSpec = SyntheticSpec()) -> Path:
    """Generate once and reuse: the folder is rebuilt only if its ``synthetic.json`` differs from ``spec``."""
    root = Path(root)
    marker = root / "synthetic.json"
    if marker.is_file() and json.loads(marker.read_text()) == asdict(spec):
        return root
    tmp = root.with_name(f".{root.name}.{os.getpid()}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    generate(tmp, spec)
    if root.exists():
        shutil.rmtree(root)
    root.parent.mkdir(parents=True, exist_ok=True)
    os.replace(tmp, root)
    return root
