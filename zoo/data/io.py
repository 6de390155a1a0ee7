"""Reading radiographs as grayscale: 8/16-bit PNG, JPEG (truncated too), TIFF, EXIF rotation, DICOM."""

from __future__ import annotations

import os
import threading
import warnings
from contextlib import contextmanager
from pathlib import Path

import numpy as np
from PIL import Image, ImageFile, ImageOps, UnidentifiedImageError

DICOM_SUFFIXES = {".dcm", ".dicom"}
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".gif", ".webp"} | DICOM_SUFFIXES


class ImageReadError(ValueError):
    """A file that cannot be decoded as an image at all."""


def max_pixels() -> int:
    """The largest image (width x height) decoded: 64 Mpx unless ``BONE_ZOO_MAX_PIXELS`` says otherwise. Radiographs
    are under 30 Mpx; a larger header is refused before any pixel is decoded (a decompression bomb inflates a small
    file into gigabytes), as Pillow's own guard does at 179 Mpx."""
    return int(os.environ.get("BONE_ZOO_MAX_PIXELS", 64_000_000))


BOMB_HINT = ("refused before decoding (decompression-bomb guard). Downscale it, or raise BONE_ZOO_MAX_PIXELS if it "
             "is a genuine image")


def _check_size(path: Path, width: int, height: int) -> None:
    limit = max_pixels()
    if width * height > limit:
        raise ImageReadError(f"{path}: {width}x{height} px ({width * height / 1e6:.0f} Mpx) is over the "
                             f"{limit / 1e6:.0f} Mpx limit, {BOMB_HINT}")


def examples(names: list[str], n: int = 5) -> str:
    """The first ``n`` of ``names``, comma-separated, with " ..." when there are more (for notes and warnings)."""
    return ", ".join(names[:n]) + (" ..." if len(names) > n else "")


class TruncatedImageWarning(UserWarning):
    """A truncated file was read with Pillow's truncated-image mode: its missing part is grey/black."""


def _minmax(a: np.ndarray) -> np.ndarray:
    a = a.astype(np.float32)
    lo, hi = float(a.min()), float(a.max())
    return (a - lo) / (hi - lo) if hi > lo else np.zeros_like(a)


def _read_dicom(path: Path) -> np.ndarray:
    try:
        import pydicom
        from pydicom.pixels import apply_modality_lut, apply_voi_lut
    except ImportError as exc:  # pragma: no cover - depends on the install
        raise ImageReadError(f"{path}: reading DICOM needs pydicom (pip install 'bone-zoo[dicom]')") from exc
    try:
        ds = pydicom.dcmread(str(path))
        _check_size(path, int(getattr(ds, "Columns", 0) or 0), int(getattr(ds, "Rows", 0) or 0))
        arr = ds.pixel_array
    except ImageReadError:
        raise
    except Exception as exc:
        hint = " (compressed pixel data: pip install pylibjpeg pylibjpeg-libjpeg, or gdcm)" \
            if "decode" in str(exc).lower() or "plugin" in str(exc).lower() else ""
        raise ImageReadError(f"{path}: not a readable DICOM ({str(exc).splitlines()[0][:200]}){hint}") from exc
    if arr.ndim == 3 and arr.shape[-1] in (3, 4):  # colour DICOM (rare for radiographs)
        arr = arr[..., :3].mean(-1)
    elif arr.ndim == 3:  # multi-frame: first frame
        arr = arr[0]
    arr = apply_modality_lut(arr, ds)
    if "WindowCenter" in ds:
        arr = apply_voi_lut(arr, ds)
    img = _minmax(np.asarray(arr))
    if str(getattr(ds, "PhotometricInterpretation", "")).upper() == "MONOCHROME1":
        img = 1.0 - img  # MONOCHROME1: high values are dark
    return img


def _pil_to_gray(img: Image.Image) -> np.ndarray:
    img = ImageOps.exif_transpose(img)
    if img.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        return _minmax(np.asarray(img))  # 12/16-bit data rarely fills the range: stretch it
    if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
        img = img.convert("RGBA")
        bg = Image.new("RGBA", img.size, (0, 0, 0, 255))
        img = Image.alpha_composite(bg, img)
    return np.asarray(img.convert("L"), dtype=np.float32) / 255.0


class _TruncationGate:
    """Pillow's truncated-image switch is a module global: strict reads may run together, a permissive re-read runs
    alone (so no strict read silently accepts a truncated file while the switch is on)."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._readers = 0
        self._permissive = False

    @contextmanager
    def strict(self):
        with self._cond:
            while self._permissive:
                self._cond.wait()
            self._readers += 1
        try:
            yield
        finally:
            with self._cond:
                self._readers -= 1
                self._cond.notify_all()

    @contextmanager
    def permissive(self):
        with self._cond:
            while self._permissive or self._readers:
                self._cond.wait()
            self._permissive = True
        old = ImageFile.LOAD_TRUNCATED_IMAGES
        ImageFile.LOAD_TRUNCATED_IMAGES = True
        try:
            yield
        finally:
            ImageFile.LOAD_TRUNCATED_IMAGES = old
            with self._cond:
                self._permissive = False
                self._cond.notify_all()


_GATE = _TruncationGate()


def decode(path: str | Path) -> tuple[np.ndarray, bool]:
    """``(float32 image in [0, 1] of shape (H, W), was_truncated)``; undecodable files raise :class:`ImageReadError`.

    Thread-safe and silent (no warnings module state touched), for the parallel decoder of the image cache.
    """
    path = Path(path)
    if path.suffix.lower() in DICOM_SUFFIXES:
        return _read_dicom(path), False
    try:
        with _GATE.strict(), Image.open(path) as img:
            _check_size(path, *img.size)  # from the header: nothing decoded yet
            img.load()
            return _pil_to_gray(img), False
    except (UnidentifiedImageError, FileNotFoundError, IsADirectoryError) as exc:
        raise ImageReadError(f"{path}: not an image ({type(exc).__name__})") from exc
    except ImageReadError:
        raise
    except Image.DecompressionBombError as exc:  # Pillow's own guard, should BONE_ZOO_MAX_PIXELS be raised past it
        raise ImageReadError(f"{path}: {str(exc).split(',')[0]}, {BOMB_HINT}") from exc
    except (OSError, SyntaxError, ValueError) as exc:
        if "truncated" not in str(exc).lower() and "premature end" not in str(exc).lower():
            raise ImageReadError(f"{path}: cannot decode ({exc})") from exc
    try:  # truncated: read what is there
        with _GATE.permissive(), Image.open(path) as img:
            img.load()
            return _pil_to_gray(img), True
    except Exception as exc:
        raise ImageReadError(f"{path}: truncated beyond repair ({exc})") from exc


def read_grayscale(path: str | Path) -> np.ndarray:
    """Float32 array in [0, 1], shape (H, W). Truncated files are read with a :class:`TruncatedImageWarning`;
    undecodable ones raise :class:`ImageReadError`."""
    img, truncated = decode(path)
    if truncated:
        warnings.warn(f"{path}: truncated image, read what was there", TruncatedImageWarning, stacklevel=2)
    return img


def resize_pad(img: np.ndarray, size: int) -> np.ndarray:
    """Aspect-preserving resize so the long side is ``size``, centred on a black square: uint8 (size, size)."""
    h, w = img.shape
    scale = size / max(h, w)
    nh, nw = max(1, round(h * scale)), max(1, round(w * scale))
    pil = Image.fromarray(np.clip(img * 255.0 + 0.5, 0, 255).astype(np.uint8), mode="L")
    pil = pil.resize((nw, nh), Image.Resampling.BILINEAR, reducing_gap=3.0 if scale < 0.5 else None)
    out = np.zeros((size, size), dtype=np.uint8)
    top, left = (size - nh) // 2, (size - nw) // 2
    out[top : top + nh, left : left + nw] = np.asarray(pil)
    return out


def load_resized(path: str | Path, size: int) -> tuple[np.ndarray, bool]:
    """``(resize_pad(image, size), was_truncated)`` for one file (see :func:`decode`)."""
    img, truncated = decode(path)
    return resize_pad(img, size), truncated
