"""Hostile inputs a security review found past the first bounds (issue 19, second round): compressed DICOM frames
that hold more than their header declares (JPEG, RLE), DICOM headers of a million tiny elements, a 16-bit PNG bomb
under the old 64 Mpx bound. Peak RSS is measured in a fresh reading process (see tests/test_dicom_bomb.py)."""

from __future__ import annotations

import subprocess
import sys
from io import BytesIO
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from zoo.data import read_grayscale
from zoo.data.io import ImageReadError, load_resized

pydicom = pytest.importorskip("pydicom")
from tests.test_dicom_bomb import LAUNCH, READ  # noqa: E402


def _peak(path: Path, code: str = READ) -> tuple[str, float]:
    proc = subprocess.run([sys.executable, "-c", LAUNCH, code, str(path)], capture_output=True, text=True,
                          timeout=300, cwd=Path(__file__).parents[1])
    assert proc.returncode == 0, proc.stderr
    return proc.stdout, float(proc.stdout.split("RSS_MB")[1])


def _dicom(path: Path, rows: int, cols: int, syntax, pixel_data: bytes, spp: int = 1, extra: int = 0) -> Path:
    from pydicom import uid
    from pydicom.dataset import FileDataset, FileMetaDataset

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = uid.SecondaryCaptureImageStorage
    meta.MediaStorageSOPInstanceUID = uid.generate_uid()
    meta.TransferSyntaxUID = syntax
    ds = FileDataset(str(path), {}, file_meta=meta, preamble=b"\0" * 128)
    ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
    ds.Modality, ds.Rows, ds.Columns = "CR", rows, cols
    ds.SamplesPerPixel = spp
    ds.PhotometricInterpretation = "MONOCHROME2" if spp == 1 else "YBR_FULL_422"
    if spp > 1:
        ds.PlanarConfiguration = 0
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
    if extra:  # many empty private LO elements (a private block of group 0x0009 .. 0x7FDF, 0x0010-0xFFFF each)
        ds.add_new(0x00090010, "LO", "BOMB")
        n = 0
        for group in range(0x0009, 0x7FE0, 2):
            for elem in range(0x1000, 0x10000):
                if n == extra:
                    break
                ds.add_new(group << 16 | elem, "LO", "")
                n += 1
            if n == extra:
                break
    if syntax.is_encapsulated:
        from pydicom.encaps import encapsulate

        ds.PixelData = encapsulate([pixel_data])
        ds["PixelData"].VR = "OB"
    else:
        ds.PixelData = pixel_data
    ds.save_as(str(path), enforce_file_format=True)
    return path


def _jpeg(width: int, height: int, mode: str = "L") -> bytes:
    buf = BytesIO()
    Image.new(mode, (width, height)).save(buf, "JPEG", quality=50)
    return buf.getvalue()


@pytest.mark.parametrize("declared, message", [
    (64, "the first compressed frame runs past twice its header's 4096 bytes"),  # the reported 245 KB file
    (512, "4000x4000 px x 3 sample(s) but the header declares 512x512 px x 1"),  # a frame short enough to be opened
])
def test_jpeg_frame_bigger_than_its_header_is_refused_before_decoding_in_bounded_memory(tmp_path, declared, message):
    from pydicom.uid import JPEGBaseline8Bit

    path = _dicom(tmp_path / "jpeg-bomb.dcm", declared, declared, JPEGBaseline8Bit, _jpeg(4000, 4000, "RGB"))
    assert path.stat().st_size < 300_000
    out, rss = _peak(path)
    assert "REFUSED" in out and message in out, out
    assert rss < 200, f"peak RSS {rss:.0f} MB (was 242 MB)"


def test_honest_jpeg_and_rle_dicoms_still_read(tmp_path):
    from pydicom.uid import JPEGBaseline8Bit, RLELossless

    img = read_grayscale(_dicom(tmp_path / "ok.dcm", 48, 64, JPEGBaseline8Bit, _jpeg(64, 48)))
    assert img.shape == (48, 64)
    v = (np.add.outer(np.arange(40), np.arange(30)) * 3).astype(np.uint8)
    path = _dicom(tmp_path / "raw.dcm", 40, 30, pydicom.uid.ExplicitVRLittleEndian, v.tobytes())
    ds = pydicom.dcmread(path)
    ds.compress(RLELossless)
    ds.save_as(tmp_path / "rle.dcm")
    assert np.allclose(read_grayscale(tmp_path / "rle.dcm"), v / 255, atol=1e-6)


def _rle(segment: bytes) -> bytes:
    return (1).to_bytes(4, "little") + (64).to_bytes(4, "little") + bytes(56) + segment


def test_rle_frame_longer_than_any_honest_encoding_is_refused_in_bounded_memory(tmp_path):
    from pydicom.uid import RLELossless

    path = _dicom(tmp_path / "rle-bomb.dcm", 8, 8, RLELossless, _rle(b"\x81\x00" * 2_000_000))  # 4 MB -> 256 MB
    out, rss = _peak(path)
    assert "REFUSED" in out and "the first compressed frame runs past twice its header's 64 bytes" in out, out
    assert rss < 200, f"peak RSS {rss:.0f} MB (was 341 MB, and read)"


def test_rle_segment_decoding_past_its_plane_is_refused_without_decoding(tmp_path, monkeypatch):
    from pydicom.pixels.decoders import rle
    from pydicom.uid import RLELossless

    decoded = []
    monkeypatch.setattr(rle, "_rle_decode_segment", lambda src: decoded.append(src) or bytearray())
    path = _dicom(tmp_path / "rle-small.dcm", 16, 16, RLELossless, _rle(b"\x81\x00" * 200))  # 400 B -> 25.6 KB
    with pytest.raises(ImageReadError, match="RLE segment decodes past the 256 bytes"):
        read_grayscale(path)
    assert not decoded


@pytest.mark.parametrize("deflated", [False, True])
def test_header_of_a_million_tiny_elements_is_refused_fast_in_bounded_memory(tmp_path, deflated):
    from pydicom import uid

    syntax = uid.DeflatedExplicitVRLittleEndian if deflated else uid.ExplicitVRLittleEndian
    path = _dicom(tmp_path / "many.dcm", 8, 8, syntax, bytes(64), extra=1_000_000)
    assert path.stat().st_size > (0 if deflated else 8_000_000)
    code = READ.replace("import resource, sys", "import resource, sys, time; t0 = time.process_time()").replace(
        'print("RSS_MB"', 'print("CPU_S", time.process_time() - t0); print("RSS_MB"')
    out, rss = _peak(path, code)
    assert "REFUSED" in out and "elements before the pixel data" in out, out
    assert rss < 200, f"peak RSS {rss:.0f} MB (was 406 MB, and read)"
    assert float(out.split("CPU_S")[1].split()[0]) < 3, out  # was 13 s


def test_sixteen_bit_png_bomb_is_refused_in_bounded_memory(tmp_path):
    path = tmp_path / "bomb.png"
    Image.fromarray(np.zeros((8000, 8000), dtype=np.uint16)).save(path)
    assert path.stat().st_size < 200_000
    out, rss = _peak(path)
    assert "REFUSED" in out and "8000x8000 px (64 Mpx) is over the 30 Mpx limit" in out, out
    assert rss < 300, f"peak RSS {rss:.0f} MB (was 1060 MB, and read)"


RESIZED = READ.replace("read_grayscale(sys.argv[1])", "load_resized(sys.argv[1], 256)").replace(
    "import ImageReadError, read_grayscale", "import ImageReadError, load_resized")


def test_large_sixteen_bit_png_within_the_bound_is_shrunk_before_float_conversion(tmp_path):
    path = tmp_path / "big.png"
    Image.fromarray((np.arange(5000 * 5000, dtype=np.uint32) % 65536).astype(np.uint16).reshape(5000, 5000)).save(path)
    out, rss = _peak(path, RESIZED)
    assert "READ" in out, out
    assert rss < 300, f"peak RSS {rss:.0f} MB"
    small, _ = load_resized(path, 64)
    assert small.shape == (64, 64) and small.dtype == np.uint8


def test_rle_frame_over_twice_its_plane_is_refused(tmp_path):
    from pydicom.uid import RLELossless

    path = _dicom(tmp_path / "rle-long.dcm", 64, 64, RLELossless, _rle(b"\x00\x00" * 5000))  # 10 KB for 4 KB
    with pytest.raises(ImageReadError, match="longer than any honest encoding"):
        read_grayscale(path)
