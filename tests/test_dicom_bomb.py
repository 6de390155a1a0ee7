"""DICOM is read from its header first (issue 19.1): a deflated decompression bomb is refused with a message before
anything big is inflated, and normal DICOMs (plain, deflated, multi-frame within the limit) still read."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from zoo.data import read_grayscale
from zoo.data.io import ImageReadError

pytest.importorskip("pydicom")


def _dicom(path: Path, rows: int, cols: int, frames: int = 1, deflated: bool = False,
           pixels: bytes | None = None) -> Path:
    from pydicom import uid
    from pydicom.dataset import FileDataset, FileMetaDataset

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = uid.SecondaryCaptureImageStorage
    meta.MediaStorageSOPInstanceUID = uid.generate_uid()
    meta.TransferSyntaxUID = uid.DeflatedExplicitVRLittleEndian if deflated else uid.ExplicitVRLittleEndian
    ds = FileDataset(str(path), {}, file_meta=meta, preamble=b"\0" * 128)
    ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
    ds.Modality = "CR"
    ds.Rows, ds.Columns = rows, cols
    if frames > 1:
        ds.NumberOfFrames = frames
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
    ds.PixelData = pixels if pixels is not None else bytes(rows * cols * frames)
    ds.save_as(str(path), enforce_file_format=True)  # pydicom deflates the dataset itself (zlib)
    return path


def bomb(folder: Path) -> Path:
    """4096 x 4096 px x 4 frames of zeros, deflated: ~64 KB on disk, 67 MB of pixels (320-400 MB peak before)."""
    return _dicom(folder / "bomb.dcm", 4096, 4096, frames=4, deflated=True)


READ = """
import resource, sys
from zoo.data.io import ImageReadError, read_grayscale
try:
    read_grayscale(sys.argv[1])
    print("READ")
except ImageReadError as exc:
    print("REFUSED", exc)
print("RSS_MB", resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
"""
# Linux carries ru_maxrss over fork + exec (the parent's peak would be read as the child's), so the reader is started
# from a small launcher process, not from pytest.
LAUNCH = "import subprocess, sys; sys.exit(subprocess.run([sys.executable, '-c', *sys.argv[1:]]).returncode)"


def test_deflated_bomb_is_refused_with_a_message_in_bounded_memory(tmp_path):
    path = bomb(tmp_path)
    assert path.stat().st_size < 100_000
    proc = subprocess.run([sys.executable, "-c", LAUNCH, READ, str(path)], capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert "REFUSED" in proc.stdout and "4096x4096 px x 4 frame(s)" in proc.stdout and "BONE_ZOO_MAX_PIXELS" in \
        proc.stdout, proc.stdout
    rss = float(proc.stdout.split("RSS_MB")[1])
    assert rss < 200, f"peak RSS {rss:.0f} MB"


def test_deflated_stream_longer_than_its_header_declares_is_not_inflated(tmp_path, monkeypatch):
    """Within the limit, only the header and the first frame are inflated, whatever follows."""
    import zoo.data.io as io

    path = _dicom(tmp_path / "frames.dcm", 256, 256, frames=8, deflated=True,
                  pixels=np.arange(256 * 256 * 8, dtype=np.uint8).tobytes())
    inflated = []
    real = io._Inflating._fill

    def spy(self, end):
        real(self, end)
        inflated.append(len(self._buf))

    monkeypatch.setattr(io._Inflating, "_fill", spy)
    img = read_grayscale(path)
    assert img.shape == (256, 256) and img[0, 1] == pytest.approx(1 / 255)
    assert max(inflated) < 256 * 256 + 64 * 1024  # one frame and the header, not eight frames


def test_header_limit_counts_every_frame(tmp_path, monkeypatch):
    monkeypatch.setenv("BONE_ZOO_MAX_PIXELS", str(64 * 64 * 3))
    path = _dicom(tmp_path / "four.dcm", 64, 64, frames=4)
    with pytest.raises(ImageReadError, match=r"64x64 px x 4 frame\(s\)"):
        read_grayscale(path)
    assert read_grayscale(_dicom(tmp_path / "three.dcm", 64, 64, frames=3)).shape == (64, 64)


@pytest.mark.parametrize("deflated", [False, True])
def test_normal_dicoms_still_read(tmp_path, deflated):
    v = (np.add.outer(np.arange(40), np.arange(30)) * 3).astype(np.uint8)
    img = read_grayscale(_dicom(tmp_path / "x.dcm", 40, 30, deflated=deflated, pixels=v.tobytes()))
    assert img.shape == (40, 30) and np.allclose(img, v / 255, atol=1e-6)
