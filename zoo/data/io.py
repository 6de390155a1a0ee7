"""Reading radiographs as grayscale: 8/16-bit PNG, JPEG (truncated too), TIFF, EXIF rotation, DICOM."""

from __future__ import annotations

import os
import threading
import warnings
import zlib
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


def _unit(a: np.ndarray, lo: float, hi: float) -> np.ndarray:
    """``a`` mapped from its declared range [lo, hi] (bit depth, LUT output) onto [0, 1]: never its own min/max, so
    one film gives one tensor whatever the file format."""
    a = np.asarray(a, dtype=np.float32)
    return np.clip((a - lo) / (hi - lo), 0.0, 1.0) if hi != lo else np.zeros_like(a)


# -- DICOM: the header first, then at most the first frame --------------------------------------------------------
_PIXEL_TAGS = (0x7FE00010, 0x7FE00008, 0x7FE00009)  # Pixel Data, Float Pixel Data, Double Float Pixel Data
DICOM_HEADER_SLACK = 16 * 2**20  # what a header (everything before the pixel data) may inflate to


def _check_dicom_size(path: Path, ds) -> None:
    """Rows x Columns x frames x bits against the pixel limit, from the header alone (all frames count: a file is
    refused, not half-read). ``BONE_ZOO_MAX_PIXELS`` pixels of up to 16 bits each."""
    rows, cols = int(ds.get("Rows") or 0), int(ds.get("Columns") or 0)
    frames = max(1, int(ds.get("NumberOfFrames") or 1))
    bits = int(ds.get("SamplesPerPixel") or 1) * int(ds.get("BitsAllocated") or 16)
    limit, pixels = max_pixels(), rows * cols * frames
    if pixels > limit or pixels * bits > limit * 16:
        raise ImageReadError(f"{path}: {cols}x{rows} px x {frames} frame(s) x {bits} bits ({pixels / 1e6:.0f} Mpx, "
                             f"{pixels * bits / 8e6:.0f} MB of pixel data) is over the {limit / 1e6:.0f} Mpx limit "
                             f"(16 bits a pixel, every frame counted), {BOMB_HINT}")


class _Inflating:
    """A seekable, read-only view of a raw-deflate stream (Deflated Explicit VR Little Endian), inflated as it is read
    and never past ``limit`` bytes: pydicom's own reader inflates the whole file first, whatever its size."""

    def __init__(self, fp, path: Path, limit: int) -> None:
        self._fp, self._z, self._buf, self._pos = fp, zlib.decompressobj(-zlib.MAX_WBITS), bytearray(), 0
        self.name, self.limit = str(path), limit

    def _fill(self, end: int) -> None:
        while len(self._buf) < end and not self._z.eof:
            if len(self._buf) >= self.limit:
                raise ImageReadError(f"{self.name}: deflated data inflates past {self.limit / 1e6:.0f} MB before its "
                                     f"header says it should, {BOMB_HINT}")
            data = self._z.unconsumed_tail or self._fp.read(1 << 16)
            if not data:
                break
            self._buf += self._z.decompress(data, min(end, self.limit) - len(self._buf))

    def read(self, n: int = -1) -> bytes:
        self._fill(self.limit if n is None or n < 0 else self._pos + n)
        end = len(self._buf) if n is None or n < 0 else self._pos + n
        out = bytes(self._buf[self._pos:end])
        self._pos += len(out)
        return out

    def seek(self, offset: int, whence: int = 0) -> int:
        if whence == 2:
            raise OSError("a deflated stream has no known end")
        self._pos = max(0, offset + (self._pos if whence == 1 else 0))
        return self._pos

    def tell(self) -> int:
        return self._pos


def _one_frame(ds):
    """A shallow copy of header ``ds`` that describes its first frame only."""
    from pydicom.dataset import Dataset

    frame = Dataset(ds)
    if "NumberOfFrames" in frame:
        frame.NumberOfFrames = 1
    return frame


def _dicom_header(path: Path, fp):
    """``(header dataset without pixel data, first frame's pixel data bytes or None)``. Plain transfer syntaxes: the
    header via ``stop_before_pixels`` (the pixels are decoded later, first frame only). Deflated: inflated on demand,
    the header within :data:`DICOM_HEADER_SLACK`, then exactly one frame's bytes once the header passed the limit."""
    import pydicom
    from pydicom.dataset import FileMetaDataset
    from pydicom.filereader import read_dataset, read_preamble
    from pydicom.pixels.utils import get_expected_length
    from pydicom.uid import DeflatedExplicitVRLittleEndian, ExplicitVRLittleEndian

    read_preamble(fp, False)
    meta = FileMetaDataset(read_dataset(fp, False, True, stop_when=lambda tag, vr, length: tag >> 16 != 2))
    if meta.get("TransferSyntaxUID") != DeflatedExplicitVRLittleEndian:
        fp.seek(0)
        ds = pydicom.dcmread(fp, stop_before_pixels=True)
        _check_dicom_size(path, ds)
        return ds, None
    stream = _Inflating(fp, path, DICOM_HEADER_SLACK)
    ds = read_dataset(stream, False, True, stop_when=lambda tag, vr, length: tag in _PIXEL_TAGS)
    ds.file_meta = meta
    _check_dicom_size(path, ds)
    start = stream.tell()
    head = stream.read(12)  # tag, VR, 2 reserved bytes, 32-bit length (OB/OW)
    if len(head) < 12 or (int.from_bytes(head[:2], "little") << 16 | int.from_bytes(head[2:4], "little")) != 0x7FE00010:
        raise ImageReadError(f"{path}: a deflated DICOM without (7FE0,0010) Pixel Data; nothing to read")
    need = get_expected_length(_one_frame(ds), "bytes")
    stream.limit = start + 12 + need
    data = stream.read(need)
    if len(data) < need:
        raise ImageReadError(f"{path}: deflated pixel data ends after {len(data)} of the {need} bytes of one frame")
    meta.TransferSyntaxUID = ExplicitVRLittleEndian  # inflated, the pixel data is native
    return ds, data


def _dicom_pixels(path: Path, fp, ds, data: bytes | None) -> np.ndarray:
    """The first frame, decoded (pydicom's decoders; only that frame's bytes are read)."""
    from pydicom.pixels import pixel_array

    if data is None:
        fp.seek(0)
        return pixel_array(fp, index=0)
    frame = _one_frame(ds)
    frame.file_meta, frame.PixelData = ds.file_meta, data
    return pixel_array(frame)


def _dicom_to_unit(arr: np.ndarray, ds) -> np.ndarray:
    """Stored values -> modality LUT -> VOI LUT or window, then scaled by the declared output range of the last step
    (BitsStored and PixelRepresentation, the LUT's bit depth, the rescaled range: pydicom's own ``y_min``/``y_max``),
    never the image's own range. MONOCHROME1 is inverted (high values are dark)."""
    from pydicom.pixels import apply_modality_lut, apply_voi_lut

    bits = int(ds.get("BitsStored") or ds.get("BitsAllocated") or 8)
    signed = ds.get("PixelRepresentation") == 1
    lo, hi = (-(2.0 ** (bits - 1)), 2.0 ** (bits - 1) - 1) if signed else (0.0, 2.0**bits - 1)
    if arr.ndim == 3:  # colour DICOM (rare for radiographs): no grey LUTs apply
        return _unit(arr[..., :3].mean(-1), lo, hi)
    photometric = str(ds.get("PhotometricInterpretation", "")).upper()
    if ds.get("ModalityLUTSequence"):
        lo, hi = 0.0, 2.0 ** int(ds.ModalityLUTSequence[0].LUTDescriptor[2]) - 1
    elif "RescaleSlope" in ds and "RescaleIntercept" in ds:
        slope, intercept = float(ds.RescaleSlope), float(ds.RescaleIntercept)
        lo, hi = lo * slope + intercept, hi * slope + intercept  # pydicom's windowing output range, in this order
    arr = apply_modality_lut(arr, ds)
    if photometric in ("MONOCHROME1", "MONOCHROME2"):
        voi = ds.get("VOILUTSequence")
        if voi and voi[0].get("LUTDescriptor") is not None and voi[0].get("LUTData") is not None:
            lo, hi = 0.0, 2.0 ** int(voi[0].LUTDescriptor[2]) - 1
        arr = apply_voi_lut(arr, ds)  # a VOI LUT before a window, as pydicom prefers; a window keeps [lo, hi]
    img = _unit(arr, lo, hi)  # a negative slope gives hi < lo: still 0 at the lowest stored value
    return 1.0 - img if photometric == "MONOCHROME1" else img


def _read_dicom(path: Path) -> np.ndarray:
    try:
        import pydicom  # noqa: F401
    except ImportError as exc:  # pragma: no cover - depends on the install
        raise ImageReadError(f"{path}: reading DICOM needs pydicom (pip install 'bone-zoo[dicom]')") from exc
    try:
        with open(path, "rb") as fp:
            ds, data = _dicom_header(path, fp)
            arr = _dicom_pixels(path, fp, ds, data)
        return _dicom_to_unit(np.asarray(arr), ds)
    except ImageReadError:
        raise
    except Exception as exc:
        hint = " (compressed pixel data: pip install pylibjpeg pylibjpeg-libjpeg, or gdcm)" \
            if "decode" in str(exc).lower() or "plugin" in str(exc).lower() else ""
        raise ImageReadError(f"{path}: not a readable DICOM ({str(exc).splitlines()[0][:200]}){hint}") from exc


def _declared_bits(img: Image.Image) -> int:
    """The bit depth a high-bit-depth file declares: 16 for I;16 (PNG, TIFF), a TIFF's BitsPerSample, 16 for a
    PNG in mode I, else 32."""
    if img.mode.startswith("I;16"):
        return 16
    bits = getattr(img, "tag_v2", {}).get(258)  # TIFF BitsPerSample
    bits = bits[0] if isinstance(bits, tuple) else bits
    return int(bits) if bits else 16 if img.format == "PNG" else 32


def _pil_to_gray(img: Image.Image) -> np.ndarray:
    img = ImageOps.exif_transpose(img)
    if img.mode == "F":  # floating point: taken as intensities in [0, 1]
        return np.clip(np.asarray(img, dtype=np.float32), 0.0, 1.0)
    if img.mode.startswith("I"):  # 16/32-bit: by the declared depth, so 12-bit data in a 16-bit file stays dark
        return _unit(np.asarray(img), 0.0, 2.0 ** _declared_bits(img) - 1)
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
