"""Layouts, labels, the study-level split, image reading (8/16-bit, truncated, corrupt, EXIF, DICOM), the cache."""

import warnings

import numpy as np
import pandas as pd
import pytest
from conftest import REFERENCE_CSV, SHARED_DATA
from PIL import Image

from zoo.data import (
    ImageReadError,
    LayoutError,
    TruncatedImageWarning,
    detect_layout,
    load_dataset,
    load_images,
    read_grayscale,
    read_label_csv,
    resize_pad,
    split_by_study,
    studies,
)


def _png(path, value=128, size=(40, 30)):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full(size[::-1], value, np.uint8)).save(path)


@pytest.mark.skipif(not REFERENCE_CSV.is_file(), reason="../shared/reference/train.csv not present")
def test_reference_csv_format_with_synthetic_images(tmp_path):
    """The competition's exact train.csv (real ids, NA/empty labels) with images named after a subset of its ids."""
    ref = pd.read_csv(REFERENCE_CSV, dtype=str, keep_default_na=False)
    labels = read_label_csv(REFERENCE_CSV)
    assert len(labels) == len(ref) == 4000
    assert set(np.unique(labels.dropna())) == {0.0, 1.0}
    assert labels.isna().sum() == ref["label"].str.strip().str.upper().isin(["", "NA"]).sum() > 0
    sub = ref.groupby(ref["id"].str.split("_").str[0]).head(10)  # 10 studies per body part
    (tmp_path / "train").mkdir()
    for k, sid in enumerate(sub["id"]):
        for n in range(1, 1 + k % 3 + 1):
            _png(tmp_path / "train" / f"{sid}_image{n}.png", value=40 + n)
    sub.to_csv(tmp_path / "train.csv", index=False)
    _png(tmp_path / "test" / "WRIST_0123456789_image1.png")
    ds = load_dataset(tmp_path)
    assert ds.layout == "competition"
    st = studies(ds.train)
    assert len(st) == 30 and set(st["part"]) == {"HAND", "WRIST", "FOREARM"}
    expected = labels[sub["id"]].sort_index()
    assert np.array_equal(st.set_index("id")["label"].sort_index().to_numpy(), expected.to_numpy(), equal_nan=True)
    assert ds.test["id"].tolist() == ["WRIST_0123456789"]
    assert "unlabelled" in ds.summary()


def test_label_csv_errors_say_where(tmp_path):
    bad = tmp_path / "bad.csv"
    bad.write_text("id,label\nHAND_aa,0\nHAND_bb,2\n")
    with pytest.raises(LayoutError, match=r"line 3.*'2'.*HAND_bb"):
        read_label_csv(bad)
    (tmp_path / "cols.csv").write_text("study,y\na,1\n")
    with pytest.raises(LayoutError, match="needs columns id,label"):
        read_label_csv(tmp_path / "cols.csv")


def test_not_a_dataset_is_one_clear_error(tmp_path):
    with pytest.raises(LayoutError, match="expected the competition layout"):
        detect_layout(tmp_path)


def _mura(root):
    mura = root / "MURA-v1.1"
    rows, studies_rows = {"train": [], "valid": []}, {"train": [], "valid": []}
    k = 0
    for split in ("train", "valid"):
        for part in ("XR_HAND", "XR_WRIST"):
            for _ in range(3):
                for s, tag in ((1, "positive"), (2, "negative")):
                    study = f"MURA-v1.1/{split}/{part}/patient{k:05d}/study{s}_{tag}/"
                    for i in (1, 2):
                        rows[split].append(study + f"image{i}.png")
                        _png(root / study / f"image{i}.png", value=200 if tag == "positive" else 50)
                    studies_rows[split].append((study, int(tag == "positive")))
                k += 1
        pd.Series(rows[split]).to_csv(mura / f"{split}_image_paths.csv", index=False, header=False)
        pd.DataFrame(studies_rows[split]).to_csv(mura / f"{split}_labeled_studies.csv", index=False, header=False)
    return mura


@pytest.mark.parametrize("point_at_parent", [True, False])
def test_mura_layout_is_detected(tmp_path, point_at_parent):
    mura = _mura(tmp_path)
    ds = load_dataset(tmp_path if point_at_parent else mura)
    assert ds.layout == "mura"
    assert len(ds.train) == 24 and len(ds.test) == 24
    st = studies(ds.train)
    assert len(st) == 12 and set(st["part"]) == {"HAND", "WRIST"}
    assert st["label"].tolist() == [float(i.endswith("_positive")) for i in st["id"]]
    assert all(p.exists() for p in map(__import__("pathlib").Path, ds.train["path"]))


def test_split_is_by_study_stratified_and_seeded(synthetic_root):
    ds = load_dataset(synthetic_root)
    tr, va = split_by_study(ds.train, 0.25, seed=3)
    assert set(tr["id"]).isdisjoint(va["id"])
    assert tr["label"].notna().all() and va["label"].notna().all()
    labelled = ds.train[ds.train["label"].notna()]
    assert len(tr) + len(va) == len(labelled)
    assert abs(va.groupby("id")["label"].first().mean() - labelled.groupby("id")["label"].first().mean()) < 0.06
    tr2, va2 = split_by_study(ds.train, 0.25, seed=3)
    assert va2["id"].tolist() == va["id"].tolist()
    assert split_by_study(ds.train, 0.25, seed=4)[1]["id"].tolist() != va["id"].tolist()


def test_sixteen_bit_png_is_scaled_by_its_bit_depth(tmp_path):
    a = np.zeros((20, 30), np.uint16)
    a[:, 15:] = 4000  # 12-bit data in a 16-bit file: dark, as the file declares (issue 18.5: never its own range)
    Image.fromarray(a).save(tmp_path / "x.png")
    img = read_grayscale(tmp_path / "x.png")
    assert img.dtype == np.float32 and img.shape == (20, 30)
    assert img.min() == 0.0 and img.max() == pytest.approx(4000 / 65535)


def test_exif_rotation_is_applied(tmp_path):
    img = Image.fromarray(np.zeros((10, 30), np.uint8))
    exif = img.getexif()
    exif[0x0112] = 6  # rotate 90
    img.save(tmp_path / "r.jpg", exif=exif)
    assert read_grayscale(tmp_path / "r.jpg").shape == (30, 10)


def test_truncated_jpeg_is_read_with_a_warning_and_corrupt_file_raises(tmp_path):
    Image.fromarray((np.random.default_rng(0).random((64, 64)) * 255).astype(np.uint8)).save(tmp_path / "t.jpg")
    data = (tmp_path / "t.jpg").read_bytes()
    (tmp_path / "t.jpg").write_bytes(data[: len(data) * 2 // 3])
    with pytest.warns(TruncatedImageWarning):
        img = read_grayscale(tmp_path / "t.jpg")
    assert img.shape == (64, 64)
    (tmp_path / "c.png").write_bytes(b"not an image at all")
    with pytest.raises(ImageReadError, match="c.png"):
        read_grayscale(tmp_path / "c.png")


def test_cache_skips_unreadable_files_and_reuses_decoded_arrays(tmp_path, monkeypatch):
    _png(tmp_path / "a.png", 100, (50, 20))
    (tmp_path / "bad.png").write_bytes(b"\x89PNG broken")
    paths = [str(tmp_path / "a.png"), str(tmp_path / "bad.png")]
    arr = load_images(paths, 32, tmp_path / "cache", quiet=True)
    assert arr.ok.tolist() == [True, False] and "bad.png" in arr.errors[paths[1]]
    assert arr.array.shape == (2, 32, 32) and arr.array[0].max() == 100
    assert arr.array[0][0, :].max() == 0 and arr.array[0][16, :].min() == 100  # 50x20 -> 32x13, padded top/bottom
    import zoo.data.cache

    def no_decode(*a, **k):
        raise AssertionError("decoded again")

    monkeypatch.setattr(zoo.data.cache, "load_resized", no_decode)  # a second load must not decode again
    again = load_images(paths, 32, tmp_path / "cache", quiet=True)
    assert again.ok.tolist() == [True, False] and again.array[0].max() == 100


def test_resize_pad_keeps_aspect():
    img = np.ones((100, 50), np.float32)
    out = resize_pad(img, 64)
    assert out.shape == (64, 64) and out.dtype == np.uint8
    cols = np.flatnonzero(out.max(0))
    assert 30 <= len(cols) <= 34 and out[:, 0].max() == 0


def test_dicom_monochrome1_is_inverted(tmp_path):
    pydicom = pytest.importorskip("pydicom")
    from pydicom.dataset import FileDataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    def write(name, photometric):
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.1"
        meta.MediaStorageSOPInstanceUID = generate_uid()
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds = FileDataset(str(tmp_path / name), {}, file_meta=meta, preamble=b"\0" * 128)
        arr = np.zeros((8, 8), np.uint16)
        arr[:, 4:] = 1000
        ds.Rows, ds.Columns = arr.shape
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, photometric
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
        ds.PixelData = arr.tobytes()
        ds.save_as(str(tmp_path / name), enforce_file_format=True)
        return read_grayscale(tmp_path / name)

    mono2, mono1 = write("a.dcm", "MONOCHROME2"), write("b.dcm", "MONOCHROME1")
    bright = 1000 / 4095  # by BitsStored 12, not stretched to the image's own maximum (issue 18.5)
    assert mono2[0, 0] == 0 and mono2[0, 7] == pytest.approx(bright)
    assert mono1[0, 0] == 1 and mono1[0, 7] == pytest.approx(1 - bright)
    assert pydicom


@pytest.mark.skipif(not SHARED_DATA.is_dir(), reason="../shared/data/fracatlas-hand not present")
def test_reads_fracatlas_hand_as_it_is():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ds = load_dataset(SHARED_DATA)
        arr = load_images(ds.train["path"].tolist() + ds.test["path"].tolist(), 64, "", quiet=True)
    assert ds.layout == "competition"
    assert len(ds.train) == 856 and len(ds.test) == 217
    st = studies(ds.train)
    assert 0 < st["label"].isna().sum() < 0.15 * len(st)
    assert 0.15 < studies(ds.test)["label"].mean() < 0.4
    assert arr.ok.mean() > 0.99  # truncated JPEGs are read, not dropped


def test_parallel_decode_reports_truncation_and_leaves_warnings_alone(tmp_path):
    """Regression: warnings.catch_warnings in decoder threads once left a recorder installed, swallowing later
    warnings (predict.py's list of unreadable files went missing under load)."""
    data = None
    paths = []
    for k in range(16):
        Image.fromarray((np.random.default_rng(k).random((48, 48)) * 255).astype(np.uint8)).save(tmp_path / f"{k}.jpg")
        data = (tmp_path / f"{k}.jpg").read_bytes()
        (tmp_path / f"{k}.jpg").write_bytes(data[: len(data) // 2])
        paths.append(str(tmp_path / f"{k}.jpg"))
    show, filters = warnings.showwarning, list(warnings.filters)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        arr = load_images(paths, 32, "", workers=4, quiet=True)
    assert arr.ok.all()
    assert any(issubclass(w.category, TruncatedImageWarning) and "16 truncated" in str(w.message) for w in caught)
    assert warnings.showwarning is show and list(warnings.filters) == filters


# sha256 (first 16 hex) of _render's float32 image, its shape and the next 8 bytes of its generator, per (part,
# finding) with seed 100 + 10 * part index + finding index at 64 px; computed on the code before _render was split
RENDER_SHA = {
    ("HAND", None): "0c18c3de53949158", ("HAND", "fracture"): "657800395c9ae5ea",
    ("HAND", "implant"): "b3e473cdba9e0fcf", ("HAND", "displaced"): "9a71ad08c4f9aa7e",
    ("WRIST", None): "7a0e52dcd0bbeefb", ("WRIST", "fracture"): "5ea3ac7351b55304",
    ("WRIST", "implant"): "8821def2b6421907", ("WRIST", "displaced"): "85a9bbc3d90f3bd5",
    ("FOREARM", None): "3da250deb37a47ea", ("FOREARM", "fracture"): "5e6edc8c0803066d",
    ("FOREARM", "implant"): "bc05eebc52375509", ("FOREARM", "displaced"): "2f8089cbca8b82b7",
}
GENERATE_SHA = "96f168d54dca6ec0"  # the decoded images and csv files of generate(SyntheticSpec(6, 2, 48, seed=3))


def test_synthetic_images_are_the_same_for_the_same_seed():
    """Every part and finding renders exactly as before (same pixels, same draws from the generator), and a small
    generated dataset decodes to the same images and labels: a refactor of the generator changes no byte."""
    import hashlib

    from zoo.data.synthetic import FINDINGS, PARTS, _render

    got = {}
    for i, part in enumerate(PARTS):
        for j, finding in enumerate((None, *FINDINGS)):
            rng = np.random.default_rng(100 + 10 * i + j)
            img = _render(part, finding, rng, 64)
            digest = hashlib.sha256(img.tobytes() + str(img.shape).encode() + rng.bytes(8))
            got[(part, finding)] = digest.hexdigest()[:16]
    assert got == RENDER_SHA


def test_generated_dataset_is_the_same_for_the_same_seed(tmp_path):
    import hashlib

    from zoo.data.synthetic import SyntheticSpec, generate

    root = generate(tmp_path / "s", SyntheticSpec(n_train=6, n_test=2, size=48, seed=3))
    h = hashlib.sha256()
    for p in sorted(root.rglob("*")):
        if p.is_file() and p.suffix in (".png", ".jpg"):
            h.update(p.relative_to(root).as_posix().encode())
            h.update(np.asarray(Image.open(p)).tobytes())
        elif p.suffix == ".csv":
            h.update(p.read_bytes())
    assert h.hexdigest()[:16] == GENERATE_SHA


def test_load_dataset_gives_dataset_tables_and_the_old_name_is_a_deprecated_alias(synthetic_root):
    import zoo.data
    from zoo.data import DatasetTables

    ds = load_dataset(synthetic_root)
    assert isinstance(ds, DatasetTables) and {"train", "test"} <= set(vars(ds))
    assert "Dataset" not in zoo.data.__all__
    with pytest.warns(DeprecationWarning, match="DatasetTables"):
        assert zoo.data.Dataset is DatasetTables
