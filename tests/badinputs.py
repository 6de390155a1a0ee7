"""Bad inputs a user meets, written to disk on demand: the cases of the robustness matrix (tests/test_robustness.py
and bench/robustness.py use the same ones).

Each image case is ``name -> (writer, expectation)`` where the writer makes the file in a folder and returns its path
(named like a competition image, ``HAND_<id>_image1.<ext>``), and the expectation is ``"read"`` (decoded: a real
image in an unusual form) or ``"refused"`` (one message naming the file, never a crash).
"""

from __future__ import annotations

import io
import struct
import zlib
from collections.abc import Callable
from pathlib import Path

import numpy as np
from PIL import Image


def _xray(h: int = 96, w: int = 80, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:h, 0:w]
    bone = np.exp(-((x - w / 2) ** 2) / (2 * (w / 8) ** 2)) * 180
    return np.clip(bone + rng.normal(40, 10, (h, w)), 0, 255).astype(np.uint8)


def _name(folder: Path, sid: str, ext: str) -> Path:
    return folder / f"HAND_{sid}_image1.{ext}"


def _png_bytes(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def _jpeg_bytes(img: Image.Image, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="JPEG", **kw)
    return buf.getvalue()


def zero_byte(folder: Path) -> Path:
    p = _name(folder, "zerobyte00", "png")
    p.write_bytes(b"")
    return p


def text_as_png(folder: Path) -> Path:
    p = _name(folder, "textfile00", "png")
    p.write_text("this is not an image\n")
    return p


def truncated_png(folder: Path) -> Path:
    p = _name(folder, "truncpng00", "png")
    data = _png_bytes(Image.fromarray(_xray(256, 256)))
    p.write_bytes(data[: len(data) // 2])
    return p


def truncated_jpeg(folder: Path) -> Path:
    p = _name(folder, "truncjpg00", "jpg")
    data = _jpeg_bytes(Image.fromarray(_xray(256, 256)), quality=90)
    p.write_bytes(data[: int(len(data) * 0.6)])
    return p


def png_named_jpg(folder: Path) -> Path:
    p = _name(folder, "pngasjpg00", "jpg")
    p.write_bytes(_png_bytes(Image.fromarray(_xray())))
    return p


def png_16bit(folder: Path) -> Path:
    p = _name(folder, "png16bit00", "png")
    Image.fromarray(_xray().astype(np.uint16) * 16).save(p)  # 12-bit data in a 16-bit PNG
    return p


def rgba(folder: Path) -> Path:
    p = _name(folder, "rgbapng000", "png")
    a = _xray()
    Image.fromarray(np.dstack([a, a, a, np.full_like(a, 200)]), "RGBA").save(p)
    return p


def palette(folder: Path) -> Path:
    p = _name(folder, "palette000", "png")
    Image.fromarray(_xray()).convert("P").save(p)
    return p


def cmyk_jpeg(folder: Path) -> Path:
    p = _name(folder, "cmykjpeg00", "jpg")
    Image.fromarray(_xray()).convert("CMYK").save(p, format="JPEG")
    return p


def exif_rotated(folder: Path) -> Path:
    p = _name(folder, "exifrot000", "jpg")
    img = Image.fromarray(_xray(96, 64))
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: rotate 90 CW to display
    img.save(p, format="JPEG", exif=exif)
    return p


def one_pixel(folder: Path) -> Path:
    p = _name(folder, "onepixel00", "png")
    Image.fromarray(np.array([[128]], np.uint8)).save(p)
    return p


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def bomb_png(folder: Path, side: int = 20000) -> Path:
    """A 20000 x 20000 grey PNG header with a few bytes of data: what a decompression bomb looks like before
    decoding (a real one would inflate to 400 MB)."""
    p = _name(folder, "bomb200000", "png")
    ihdr = struct.pack(">IIBBBBB", side, side, 8, 0, 0, 0, 0)
    idat = zlib.compress(b"\x00" * (side + 1) * 4)
    p.write_bytes(b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", ihdr) + _chunk(b"IDAT", idat) + _chunk(b"IEND", b""))
    return p


def _dicom(path: Path, pixels: np.ndarray | None, photometric: str = "MONOCHROME2", compress: bool = False) -> Path:
    from pydicom.dataset import FileDataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, RLELossless, SecondaryCaptureImageStorage, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = FileDataset(str(path), {}, file_meta=meta, preamble=b"\0" * 128)
    ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
    ds.Modality, ds.PatientID = "CR", "ANON"
    if pixels is not None:
        ds.Rows, ds.Columns = pixels.shape
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, photometric
        bits = 16 if pixels.dtype == np.uint16 else 8
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = bits, bits, bits - 1, 0
        ds.PixelData = pixels.tobytes()
        if compress:
            ds.compress(RLELossless)
    ds.save_as(str(path), enforce_file_format=True)
    return path


def dicom_mono2(folder: Path) -> Path:
    return _dicom(_name(folder, "dcmmono200", "dcm"), _xray())


def dicom_mono1(folder: Path) -> Path:
    return _dicom(_name(folder, "dcmmono100", "dcm"), 255 - _xray(), "MONOCHROME1")


def dicom_16bit(folder: Path) -> Path:
    return _dicom(_name(folder, "dcm16bit00", "dcm"), _xray().astype(np.uint16) * 16)


def dicom_rle(folder: Path) -> Path:
    return _dicom(_name(folder, "dcmrle0000", "dcm"), _xray(), compress=True)


def dicom_no_pixels(folder: Path) -> Path:
    return _dicom(_name(folder, "dcmnopix00", "dcm"), None)


IMAGE_CASES: dict[str, tuple[Callable[[Path], Path], str]] = {
    "zero-byte": (zero_byte, "refused"),
    "text renamed .png": (text_as_png, "refused"),
    "truncated PNG": (truncated_png, "read"),  # read what is there, with a warning (Pillow's truncated mode)
    "truncated JPEG": (truncated_jpeg, "read"),
    "PNG bytes in .jpg": (png_named_jpg, "read"),
    "16-bit PNG": (png_16bit, "read"),
    "RGBA PNG": (rgba, "read"),
    "palette PNG": (palette, "read"),
    "CMYK JPEG": (cmyk_jpeg, "read"),
    "EXIF-rotated JPEG": (exif_rotated, "read"),
    "1x1 px": (one_pixel, "read"),
    "20000x20000 px (bomb)": (bomb_png, "refused"),
    "DICOM MONOCHROME2": (dicom_mono2, "read"),
    "DICOM MONOCHROME1": (dicom_mono1, "read"),
    "DICOM 16-bit": (dicom_16bit, "read"),
    "DICOM RLE-compressed": (dicom_rle, "read"),
    "DICOM without pixel data": (dicom_no_pixels, "refused"),
}


def good_image(folder: Path, sid: str, seed: int = 0) -> Path:
    p = _name(folder, sid, "png")
    Image.fromarray(_xray(seed=seed)).save(p)
    return p
