"""Reading radiographs as grayscale: 8/16-bit PNG, JPEG (truncated too), TIFF, EXIF rotation, DICOM."""

from __future__ import annotations

import os
import threading
import warnings
import zlib
from contextlib import contextmanager
from io import BytesIO
from pathlib import Path

import numpy as np
from PIL import Image, ImageFile, ImageOps, UnidentifiedImageError

DICOM_SUFFIXES = {".dcm", ".dicom"}
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".gif", ".webp"} | DICOM_SUFFIXES


class ImageReadError(ValueError):
    """A file that cannot be decoded as an image at all."""


def max_pixels() -> int:
    """The largest image (width x height) decoded: 30 Mpx unless ``BONE_ZOO_MAX_PIXELS`` says otherwise. The largest
    radiographs are ~20 Mpx (a 43 x 43 cm detector at 0.1 mm is 18.5 Mpx, mammograms 13-21 Mpx, most CR/DR 4-12 Mpx);
    a larger header is refused before any pixel is decoded (a decompression bomb inflates a small file into
    gigabytes: a 121 KB 16-bit PNG declares 64 Mpx), as Pillow's own guard does at 179 Mpx. At the bound a 16-bit
    image costs 60 MB decoded and 120 MB as float32."""
    return int(os.environ.get("BONE_ZOO_MAX_PIXELS", 30_000_000))


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
    one film gives one tensor whatever the file format. One float32 array, worked in place (no extra copies)."""
    if hi == lo:
        return np.zeros(np.shape(a), dtype=np.float32)
    out = np.array(a, dtype=np.float32)  # the one copy
    out -= lo
    out *= 1.0 / (hi - lo)
    return np.clip(out, 0.0, 1.0, out=out)


# -- DICOM: the header first, then at most the first frame --------------------------------------------------------
_PIXEL_TAGS = (0x7FE00010, 0x7FE00008, 0x7FE00009)  # Pixel Data, Float Pixel Data, Double Float Pixel Data
DICOM_HEADER_MAX = 2**20  # bytes before the pixel data (file meta included; a real header is a few KB)
DICOM_MAX_ELEMENTS = 10_000  # elements before the pixel data (a real header has a few hundred)
HEADER_WHAT = (f"the header runs past {DICOM_HEADER_MAX // 2**20} MB before the pixel data, refused before decoding "
               "(header-bomb guard): real DICOM headers are a few KB")
HEADER_HINT = "refused before decoding (header-bomb guard): real DICOM headers are a few KB and a few hundred elements"


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


def _past_limit(name: str, limit: int, what: str) -> ImageReadError:
    return ImageReadError(f"{name}: {what} (byte {limit} of the file)")


class _Bounded:
    """A file read through, never past byte ``limit`` (raised once the header is read, to the first frame's end)."""

    def __init__(self, fp, path: Path, limit: int) -> None:
        self._fp, self.name, self.limit, self.what = fp, str(path), limit, HEADER_WHAT

    def read(self, n: int = -1) -> bytes:
        if n is None or n < 0 or self._fp.tell() + n > self.limit:
            raise _past_limit(self.name, self.limit, self.what)
        return self._fp.read(n)

    def seek(self, offset: int, whence: int = 0) -> int:
        return self._fp.seek(offset, whence)

    def tell(self) -> int:
        return self._fp.tell()


class _Inflating:
    """A seekable, read-only view of a raw-deflate stream (Deflated Explicit VR Little Endian), inflated as it is read
    and never past ``limit`` bytes: pydicom's own reader inflates the whole file first, whatever its size."""

    def __init__(self, fp, path: Path, limit: int) -> None:
        self._fp, self._z, self._buf, self._pos = fp, zlib.decompressobj(-zlib.MAX_WBITS), bytearray(), 0
        self.name, self.limit, self.what = str(path), limit, HEADER_WHAT

    def _fill(self, end: int) -> None:
        while len(self._buf) < end and not self._z.eof:
            if len(self._buf) >= self.limit:
                raise _past_limit(self.name, self.limit, self.what)
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


def _counting_stop(path: Path):
    """pydicom's ``stop_when``: stop at the pixel data, refuse past :data:`DICOM_MAX_ELEMENTS` elements."""
    seen = [0]

    def stop(tag, vr, length) -> bool:
        seen[0] += 1
        if seen[0] > DICOM_MAX_ELEMENTS:
            raise ImageReadError(f"{path}: more than {DICOM_MAX_ELEMENTS} elements before the pixel data, "
                                 f"{HEADER_HINT}")
        return tag in _PIXEL_TAGS

    return stop


def _rle_check(path: Path, frame: bytes, ds) -> None:
    """An RLE frame that decodes to exactly its header's size (each segment one byte plane of Rows x Columns),
    checked by walking the run headers without decoding: a 2-byte run makes 128 bytes (a 64x bomb)."""
    rows, cols, spp = int(ds.Rows), int(ds.Columns), int(ds.get("SamplesPerPixel") or 1)
    plane, n_seg = rows * cols, spp * int(ds.BitsAllocated) // 8
    if len(frame) > n_seg * 2 * plane + 80:  # 2 bytes a byte: runs of one (the worst honest encoding)
        raise ImageReadError(f"{path}: an RLE frame of {len(frame)} bytes for {cols}x{rows} px x {n_seg} segment(s) "
                             f"is longer than any honest encoding, {BOMB_HINT}")
    offsets = [int.from_bytes(frame[4 * i:4 * i + 4], "little") for i in range(16)]
    if offsets[0] != n_seg or any(not 64 <= o <= len(frame) for o in offsets[1:1 + n_seg]):
        raise ImageReadError(f"{path}: an RLE header of {offsets[0]} segment(s) (offsets {offsets[1:1 + n_seg]}) for "
                             f"{n_seg} expected in {len(frame)} bytes; not a readable RLE frame")
    ends = offsets[2:1 + n_seg] + [len(frame)]
    for start, end in zip(offsets[1:1 + n_seg], ends):
        pos, out = start, 0
        while pos < end and out <= plane + 1:
            n = frame[pos]
            out, pos = (out + n + 1, pos + n + 2) if n < 128 else (out + 257 - n, pos + 2) if n > 128 else \
                (out, pos + 1)
        if out > plane + 1:  # pydicom tolerates one byte of padding
            raise ImageReadError(f"{path}: an RLE segment decodes past the {plane} bytes of its {cols}x{rows} px "
                                 f"header, {BOMB_HINT}")


def _jpeg_check(path: Path, frame: bytes, ds, syntax) -> None:
    """A JPEG / JPEG-LS / JPEG 2000 frame whose codestream declares the header's size and samples (read from the
    codestream's own header, nothing decoded): decoders follow the codestream, not Rows and Columns."""
    from pydicom.pixels.utils import _get_jpg_parameters
    from pydicom.uid import JPEG2000TransferSyntaxes

    rows, cols, spp = int(ds.Rows), int(ds.Columns), int(ds.get("SamplesPerPixel") or 1)
    try:
        with Image.open(BytesIO(frame)) as img:
            size, bands = img.size, len(img.getbands())
    except Exception:  # JPEG lossless / JPEG-LS: Pillow does not parse them; pydicom's own header reader does
        info = _get_jpg_parameters(frame) if syntax not in JPEG2000TransferSyntaxes else {}
        if not info:
            raise ImageReadError(f"{path}: the compressed frame's size cannot be read from its codestream header; "
                                 f"refused before decoding") from None
        size, bands = (info["width"], info["height"]), info["components"]
    if size != (cols, rows) or bands != spp:
        raise ImageReadError(f"{path}: the compressed frame holds {size[0]}x{size[1]} px x {bands} sample(s) but the "
                             f"header declares {cols}x{rows} px x {spp}; {BOMB_HINT}")


def _dicom_header(path: Path, fp):
    """``(header dataset, the first frame's pixel data as the file holds it)``, parsed once: the header within
    :data:`DICOM_HEADER_MAX` bytes and :data:`DICOM_MAX_ELEMENTS` elements (deflated: inflated on demand within the
    same bound), checked against the pixel limit, then one frame's bytes: native, exactly one frame; encapsulated,
    the first frame, no longer than an honest encoding and (JPEG family, RLE) declaring the header's size."""
    from pydicom import uid
    from pydicom.dataset import FileMetaDataset
    from pydicom.encaps import encapsulate, generate_frames
    from pydicom.filereader import read_dataset, read_preamble
    from pydicom.pixels.utils import get_expected_length

    stream = _Bounded(fp, path, DICOM_HEADER_MAX)
    read_preamble(stream, False)
    meta = FileMetaDataset(read_dataset(stream, False, True, stop_when=lambda tag, vr, length: tag >> 16 != 2))
    syntax = uid.UID(meta.get("TransferSyntaxUID") or uid.ImplicitVRLittleEndian)
    if syntax.is_deflated:
        stream = _Inflating(fp, path, DICOM_HEADER_MAX)
    implicit, little = syntax.is_implicit_VR, syntax.is_little_endian
    ds = read_dataset(stream, implicit, little, stop_when=_counting_stop(path))
    ds.file_meta = meta
    _check_dicom_size(path, ds)
    order = "little" if little else "big"
    head = stream.read(8)
    tag = int.from_bytes(head[:2], order) << 16 | int.from_bytes(head[2:4], order) if len(head) == 8 else None
    if tag not in _PIXEL_TAGS:
        raise ImageReadError(f"{path}: a DICOM without (7FE0,0010) Pixel Data; nothing to read")
    length = int.from_bytes(head[4:8] if implicit else stream.read(4), order)
    frame_ds = _one_frame(ds)
    need = get_expected_length(frame_ds, "bytes")
    stream.what = f"the first frame runs past its header's {need} bytes"
    if not syntax.is_encapsulated:
        stream.limit = stream.tell() + need
        data = stream.read(need)
        if len(data) < need:
            raise ImageReadError(f"{path}: pixel data ends after {len(data)} of the {need} bytes of one frame")
        if syntax.is_deflated:
            meta.TransferSyntaxUID = uid.ExplicitVRLittleEndian  # inflated, the pixel data is native
        return ds, tag, data
    if length != 0xFFFFFFFF:
        raise ImageReadError(f"{path}: compressed ({syntax.name}) pixel data of defined length; not encapsulated")
    stream.limit = stream.tell() + 2 * need + 2**16  # no honest compressed frame (with its items) is bigger
    stream.what = f"the first compressed frame runs past twice its header's {need} bytes, {BOMB_HINT}"
    data = next(generate_frames(stream, number_of_frames=max(1, int(ds.get("NumberOfFrames") or 1))), b"")
    if syntax == uid.RLELossless:
        _rle_check(path, data, ds)
    elif syntax in uid.JPEGTransferSyntaxes + uid.JPEGLSTransferSyntaxes + uid.JPEG2000TransferSyntaxes:
        _jpeg_check(path, data, ds, syntax)
    return ds, tag, encapsulate([data])


def _dicom_pixels(ds, tag: int, data: bytes) -> np.ndarray:
    """The first frame, decoded by pydicom's decoders from its bytes alone (the file is not parsed again)."""
    from pydicom.datadict import keyword_for_tag
    from pydicom.pixels import pixel_array

    frame = _one_frame(ds)
    frame.file_meta = ds.file_meta
    setattr(frame, keyword_for_tag(tag), data)
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
            ds, tag, data = _dicom_header(path, fp)
        arr = _dicom_pixels(ds, tag, data)
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


def _block_mean(a: np.ndarray, f: int) -> np.ndarray:
    """``a`` (H, W) shrunk by ``f`` (a box filter, as Pillow's ``reduce``), as float32; no full-size float copy."""
    h, w = a.shape[0] // f, a.shape[1] // f
    return a[: h * f, : w * f].reshape(h, f, w, f).mean(axis=(1, 3), dtype=np.float32)


def _pil_to_gray(img: Image.Image, size: int | None = None) -> np.ndarray:
    """Grayscale float32 in [0, 1]. With ``size`` (the target of :func:`load_resized`), an image over 4x it is first
    shrunk by a whole factor to about 2x it (Pillow's ``reduce``, a box filter), before any float conversion."""
    ImageOps.exif_transpose(img, in_place=True)  # in place: no full-size copy when nothing is to be turned
    factor = max(1, max(img.size) // (2 * size)) if size else 1
    if img.mode == "F":  # floating point: taken as intensities in [0, 1]
        a = np.asarray(img, dtype=np.float32)
        return np.clip(_block_mean(a, factor) if factor > 1 else a, 0.0, 1.0)
    if img.mode.startswith("I"):  # 16/32-bit: by the declared depth, so 12-bit data in a 16-bit file stays dark
        a = np.asarray(img)
        return _unit(_block_mean(a, factor) if factor > 1 else a, 0.0, 2.0 ** _declared_bits(img) - 1)
    if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
        img = img.convert("RGBA")
        bg = Image.new("RGBA", img.size, (0, 0, 0, 255))
        img = Image.alpha_composite(bg, img)
    img = img.convert("L")
    if factor > 1:
        img = img.reduce(factor)
    return np.asarray(img, dtype=np.float32) / 255.0


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


def decode(path: str | Path, size: int | None = None) -> tuple[np.ndarray, bool]:
    """``(float32 image in [0, 1] of shape (H, W), was_truncated)``; undecodable files raise :class:`ImageReadError`.
    With ``size``, a large image comes back shrunk to about twice ``size`` (JPEG decoded at that scale already);
    DICOM is always read at full size.

    Thread-safe and silent (no warnings module state touched), for the parallel decoder of the image cache.
    """
    path = Path(path)
    if path.suffix.lower() in DICOM_SUFFIXES:
        return _read_dicom(path), False
    try:
        with _GATE.strict(), Image.open(path) as img:
            _check_size(path, *img.size)  # from the header: nothing decoded yet
            if size and img.format == "JPEG":
                img.draft(img.mode, (2 * size, 2 * size))  # libjpeg's DCT scaling: never the full size in memory
            img.load()
            return _pil_to_gray(img, size), False
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
            return _pil_to_gray(img, size), True
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
    img, truncated = decode(path, size)
    return resize_pad(img, size), truncated
