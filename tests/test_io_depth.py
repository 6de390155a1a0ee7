"""Same film, same input (issue 18.5): intensities are scaled by the file's declared bit depth (after DICOM's modality
and VOI LUTs), never by the image's own minimum and maximum, so one radiograph saved as 8-bit PNG, JPEG, 16-bit PNG
or 12-bit DICOM reaches the network as one tensor and gets one probability."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import RUN_SIZE
from PIL import Image

from zoo.data import load_images
from zoo.data.synthetic import _render

pydicom = pytest.importorskip("pydicom")


def _film() -> np.ndarray:
    """A synthetic hand radiograph as 8-bit values in [30, 200]: like most films, it does not fill the range, so
    stretching it to its own minimum and maximum changes it."""
    return np.round(30 + _render("HAND", "displaced", np.random.default_rng(3), 160) * 170).astype(np.uint8)


def _dicom(path: Path, stored: np.ndarray, photometric: str = "MONOCHROME2", deflated: bool = False,
           window: tuple[float, float] | None = None) -> Path:
    from pydicom import uid
    from pydicom.dataset import FileDataset, FileMetaDataset

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = uid.SecondaryCaptureImageStorage
    meta.MediaStorageSOPInstanceUID = uid.generate_uid()
    meta.TransferSyntaxUID = uid.DeflatedExplicitVRLittleEndian if deflated else uid.ExplicitVRLittleEndian
    ds = FileDataset(str(path), {}, file_meta=meta, preamble=b"\0" * 128)
    ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
    ds.Modality = "CR"
    ds.Rows, ds.Columns = stored.shape
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, photometric
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    if window is not None:
        ds.RescaleSlope, ds.RescaleIntercept = 1, 0
        ds.WindowCenter, ds.WindowWidth = window
    ds.PixelData = stored.astype(np.uint16).tobytes()
    ds.save_as(str(path), enforce_file_format=True)
    return path


@pytest.fixture(scope="module")
def one_film(tmp_path_factory) -> dict[str, Path]:
    """The same film in every format the reader takes."""
    d, v = tmp_path_factory.mktemp("film"), _film()
    files = {"png8": d / "film8.png", "jpeg100": d / "film.jpg", "png16": d / "film16.png"}
    Image.fromarray(v).save(files["png8"])
    Image.fromarray(v).save(files["jpeg100"], quality=100)
    Image.fromarray(v.astype(np.uint16) * 257).save(files["png16"])  # 16-bit: v * 65535 / 255
    twelve = v.astype(np.uint16) * 16  # 12-bit, BitsStored 12
    files["dicom12"] = _dicom(d / "film12.dcm", twelve)
    files["dicom12 MONOCHROME1"] = _dicom(d / "film12m1.dcm", 4095 - twelve, "MONOCHROME1")
    files["dicom12 deflated"] = _dicom(d / "film12z.dcm", twelve, deflated=True)
    files["dicom12 full window"] = _dicom(d / "film12w.dcm", twelve, window=(2048, 4096))
    return files


def test_one_film_in_every_format_gives_one_model_input(one_film):
    names, paths = list(one_film), [str(p) for p in one_film.values()]
    arr = load_images(paths, RUN_SIZE, cache_dir="", quiet=True)  # the loading path of training and prediction
    assert arr.ok.all(), arr.errors
    x = arr.array.astype(np.int16)
    for i, name in enumerate(names):
        gap = int(np.abs(x[i] - x[0]).max())
        assert gap <= 2, f"{name}: model input differs from the 8-bit PNG's by {gap}/255"


def _sensitive_member() -> torch.nn.Module:
    """A tiny untrained BoneClassifier whose last layer is scaled 100x: an untrained network is nearly blind to
    brightness (its probability moves by ~3e-4 between a film and the film min-max stretched), a trained one is not."""
    from zoo.model import BoneClassifier

    torch.manual_seed(0)
    model = BoneClassifier("resnet10t", img_size=RUN_SIZE, head_hidden=[16], dropout=0.0).eval()
    last = [m for m in model.modules() if isinstance(m, torch.nn.Linear)][-1]
    with torch.no_grad():
        last.weight *= 100
        last.bias *= 100
    return model


def test_one_film_in_every_format_gives_one_study_probability(one_film):
    from torch.utils.data import DataLoader

    from zoo.inference import ArrayDataset, predict_array

    names, paths = list(one_film), [str(p) for p in one_film.values()]
    arr = load_images(paths, RUN_SIZE, cache_dir="", quiet=True)
    model = _sensitive_member()
    p = predict_array(model, DataLoader(ArrayDataset(arr, np.arange(len(paths))), batch_size=len(paths)),
                      torch.device("cpu"), "fp32")
    last = [m for m in model.modules() if isinstance(m, torch.nn.Linear)][-1]
    with torch.no_grad():  # centre the logit of the 8-bit PNG on 0, where a probability moves most with the logit
        last.bias -= torch.logit(torch.tensor(p[0])).item()
    p = predict_array(model, DataLoader(ArrayDataset(arr, np.arange(len(paths))), batch_size=len(paths)),
                      torch.device("cpu"), "fp32")
    assert abs(p[0] - 0.5) < 1e-3
    assert np.ptp(p) <= 0.01, dict(zip(names, p.round(4)))  # one study per format: its probability is its image's


def test_a_film_that_uses_part_of_its_range_is_not_stretched(tmp_path):
    v = np.full((32, 32), 40, np.uint8)
    v[:, 16:] = 120
    Image.fromarray(v.astype(np.uint16) * 257).save(tmp_path / "a16.png")
    _dicom(tmp_path / "a.dcm", v.astype(np.uint16) * 16)
    from zoo.data import read_grayscale

    for f in ("a16.png", "a.dcm"):
        img = read_grayscale(tmp_path / f)
        assert img.min() == pytest.approx(40 / 255, abs=0.005) and img.max() == pytest.approx(120 / 255, abs=0.005)
