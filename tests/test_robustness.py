"""The bad-input matrix: every case of tests/badinputs.py through every entry point. Each ends in one clear message
naming the file (and what to do), a non-zero exit only where nothing useful can be done, no traceback for user
errors, and no partial output file."""

from __future__ import annotations

import json
import os
import shutil
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from badinputs import IMAGE_CASES, good_image
from conftest import TINY, run_script

from demo.app import AnalysisError, MemberPool, analyse
from zoo.data import LayoutError, load_dataset, load_images, read_grayscale
from zoo.data.io import ImageReadError
from zoo.loader import load_model
from zoo.members import MemberError
from zoo.model import BoneClassifier

CASES = list(IMAGE_CASES)


@pytest.fixture(scope="module")
def bad_images(tmp_path_factory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("bad")
    return {name: writer(folder) for name, (writer, _) in IMAGE_CASES.items()}


# -- images ---------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("case", CASES)
def test_read_grayscale(case, bad_images):
    path, expect = bad_images[case], IMAGE_CASES[case][1]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # truncated files warn; that is tested in test_data
        if expect == "read":
            img = read_grayscale(path)
            assert img.ndim == 2 and img.dtype == np.float32 and 0 <= img.min() <= img.max() <= 1
        else:
            with pytest.raises(ImageReadError, match=path.name):
                read_grayscale(path)


def test_exif_rotation_and_photometric_inversion_are_applied(bad_images):
    assert read_grayscale(bad_images["EXIF-rotated JPEG"]).shape == (64, 96)  # stored 96x64, shown rotated
    mono1, mono2 = read_grayscale(bad_images["DICOM MONOCHROME1"]), read_grayscale(bad_images["DICOM MONOCHROME2"])
    assert np.abs(mono1 - mono2).mean() < 0.02  # MONOCHROME1 stores 255 - x; read, it is the same picture


def test_bomb_is_refused_from_its_header_without_decoding(bad_images, monkeypatch):
    import tracemalloc

    tracemalloc.start()
    with pytest.raises(ImageReadError, match="decompression-bomb guard"):
        read_grayscale(bad_images["20000x20000 px (bomb)"])
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert peak < 50 * 2**20  # decoding would need 400 MB
    monkeypatch.setenv("BONE_ZOO_MAX_PIXELS", "100")
    with pytest.raises(ImageReadError, match="over the 0 Mpx limit"):
        read_grayscale(bad_images["16-bit PNG"])


@pytest.mark.parametrize("case", CASES)
def test_load_images(case, bad_images):
    path, expect = bad_images[case], IMAGE_CASES[case][1]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        arr = load_images([str(path)], 32, "", quiet=True)
    assert bool(arr.ok[0]) == (expect == "read")
    if expect == "refused":
        assert path.name in arr.errors[str(path)]


@pytest.mark.parametrize("case", CASES)
def test_demo_analyse(case, bad_images, pool):
    path, expect = bad_images[case], IMAGE_CASES[case][1]
    if expect == "read":
        a = analyse([str(path)], TINY, "Grad-CAM", pool)
        assert 0 <= a.probability <= 1 and not a.skipped
    else:
        with pytest.raises(AnalysisError, match=path.name):
            analyse([str(path)], TINY, "Grad-CAM", pool)


def _mini(root: Path, src: Path, n: int = 12) -> Path:
    """A small copy of the synthetic set (n labelled training studies, 6 test studies)."""
    ds = load_dataset(src)
    (root / "train").mkdir(parents=True)
    (root / "test").mkdir()
    tr = ds.train[ds.train["label"].notna()].groupby("label").head(n // 2)
    for p in tr["path"]:
        shutil.copy(p, root / "train")
    te = ds.test.drop_duplicates("id").head(6)
    for p in te["path"]:
        shutil.copy(p, root / "test")
    pd.DataFrame({"id": tr["id"].unique()}).merge(tr[["id", "label"]].drop_duplicates("id")).assign(
        label=lambda d: d["label"].astype(int)).to_csv(root / "train.csv", index=False)
    pd.DataFrame({"id": te["id"], "label": te["label"].astype(int)}).to_csv(root / "test_labels.csv", index=False)
    return root


def test_predict_with_every_bad_image(bad_images, trained_run, tmp_path):
    """Every bad image in test/: one prediction per study (a refused file's study gets the missing value and is
    named on stderr), exit 0."""
    root = _mini(tmp_path / "d", trained_run["data"])
    for p in bad_images.values():
        shutil.copy(p, root / "test")
    out = tmp_path / "pred.csv"
    p = run_script("predict.py", "--data", root, "--models", trained_run["out"], "-output", out, "--quiet",
                   cwd=tmp_path)
    assert p.returncode == 0, p.stderr[-2000:]
    assert "Traceback" not in p.stderr
    df = pd.read_csv(out)
    assert {f"HAND_{b.stem.split('_')[1]}" for b in bad_images.values()} <= set(df["id"])  # nothing lost
    for case, path in bad_images.items():
        if IMAGE_CASES[case][1] == "refused":
            assert path.name in p.stderr, case


@pytest.mark.slow
def test_train_all_with_every_bad_image(bad_images, trained_run, tmp_path):
    root = _mini(tmp_path / "d", trained_run["data"])
    labels = pd.read_csv(root / "train.csv", dtype={"id": str})
    for i, p in enumerate(bad_images.values()):
        shutil.copy(p, root / "train")
        labels.loc[len(labels)] = [f"HAND_{p.stem.split('_')[1]}", i % 2]
    labels.to_csv(root / "train.csv", index=False)
    p = run_script("train_all.py", "--data", root, "--models", "resnet10t", "--epochs", "1", "--img-size", "32",
                   "--recipe", "seed", "--no-pretrained", "--no-export", "--out", tmp_path / "w", "--quiet",
                   cwd=tmp_path)
    assert p.returncode == 0, p.stderr[-2000:]
    assert "Traceback" not in p.stderr
    for case, path in bad_images.items():
        if IMAGE_CASES[case][1] == "refused":
            assert path.name in p.stderr, case
    assert (tmp_path / "w" / "resnet10t" / "metrics.json").is_file()


# -- folders and CSVs ---------------------------------------------------------------------------------------------
def _csv(root: Path) -> pd.DataFrame:
    return pd.read_csv(root / "train.csv", dtype={"id": str, "label": str}, keep_default_na=False)


def _empty(root):
    shutil.rmtree(root)
    root.mkdir()


def _missing_column(root):
    _csv(root)[["id"]].to_csv(root / "train.csv", index=False)


def _extra_columns(root):
    _csv(root).assign(site="A", reader="B").to_csv(root / "train.csv", index=False)


def _conflicting_duplicates(root):
    df = _csv(root)
    row = df.iloc[[0]].assign(label="1" if df["label"].iloc[0] == "0" else "0")
    pd.concat([df, row]).to_csv(root / "train.csv", index=False)


def _same_duplicates(root):
    df = _csv(root)
    pd.concat([df, df.iloc[[0]]]).to_csv(root / "train.csv", index=False)


def _bad_label(root):
    df = _csv(root)
    df.loc[0, "label"] = "abnormal"
    df.to_csv(root / "train.csv", index=False)


def _ids_without_images(root):
    df = _csv(root)
    pd.concat([df, pd.DataFrame({"id": ["HAND_ffffffffff"], "label": ["1"]})]).to_csv(root / "train.csv", index=False)


def _images_without_row(root):
    good_image(root / "train", "cafecafe00")


def _stray_files(root):
    (root / "train" / "notes.txt").write_text("reading notes")
    (root / "train" / "Thumbs.db").write_bytes(b"\0" * 10)


def _unparsed_names(root):
    good_image(root / "train", "x").rename(root / "train" / "scan 01.png")


def _non_utf8_name(root):
    path = os.path.join(os.fsencode(root / "train"), b"HAND_\xff\xfe_image1.png")
    with open(path, "wb") as fh:
        fh.write((root / "train" / next(iter(os.listdir(root / "train")))).read_bytes())


# case -> (mutation, "error" | "note" | "ok", what the message says)
FOLDER_CASES = {
    "empty folder": (_empty, "error", "expected the competition layout"),
    "train.csv missing a column": (_missing_column, "error", "needs columns id,label"),
    "extra columns": (_extra_columns, "ok", ""),
    "duplicated ids, conflicting labels": (_conflicting_duplicates, "error", "conflicting labels"),
    "duplicated ids, same label": (_same_duplicates, "note", "repeated with the same label"),
    "label not 0/1/NA/empty": (_bad_label, "error", "is not 0, 1, NA or empty"),
    "ids without images": (_ids_without_images, "note", "have no image"),
    "images without a CSV row": (_images_without_row, "note", "not in it"),
    "stray non-image files": (_stray_files, "note", "not images by their extension"),
    "file names that do not parse": (_unparsed_names, "note", "not named PART_<study>_image<N>"),
    "non-UTF-8 file name": (_non_utf8_name, "note", "not valid UTF-8"),
}


@pytest.fixture
def mini(tmp_path, trained_run):
    return _mini(tmp_path / "data", trained_run["data"])


@pytest.mark.parametrize("case", list(FOLDER_CASES))
def test_load_dataset(case, mini):
    mutate, expect, says = FOLDER_CASES[case]
    mutate(mini)
    with warnings.catch_warnings(record=True) as notes:
        warnings.simplefilter("always")
        if expect == "error":
            with pytest.raises(LayoutError, match=says.replace("(", r"\(")):
                load_dataset(mini)
            return
        ds = load_dataset(mini)
    assert len(ds.train) and len(ds.test)
    if expect == "note":
        assert any(says in str(n.message) for n in notes), [str(n.message) for n in notes]


@pytest.mark.parametrize("case", list(FOLDER_CASES))
def test_predict_folder_cases(case, mini, trained_run, tmp_path):
    mutate, expect, says = FOLDER_CASES[case]
    mutate(mini)
    out = tmp_path / "pred.csv"
    p = run_script("predict.py", "--data", mini, "--models", trained_run["out"], "-output", out, "--quiet",
                   cwd=tmp_path)
    assert "Traceback" not in p.stderr
    if expect == "error":
        assert p.returncode == 2 and says in p.stderr and str(mini) in p.stderr
        assert not out.exists() and not list(tmp_path.glob("*.tmp*"))  # no partial output
    else:
        assert p.returncode == 0, p.stderr[-2000:]
        assert len(pd.read_csv(out)) == 6
        if expect == "note":
            assert says in p.stderr


ERROR_CASES = [c for c, (_, expect, _) in FOLDER_CASES.items() if expect == "error"]


@pytest.mark.parametrize("case", ERROR_CASES)
def test_train_all_folder_errors(case, mini, tmp_path):
    mutate, _, says = FOLDER_CASES[case]
    mutate(mini)
    p = run_script("train_all.py", "--data", mini, "--models", "resnet10t", "--epochs", "1", "--img-size", "32",
                   "--recipe", "seed", "--no-pretrained", "--out", tmp_path / "w", "--quiet", cwd=tmp_path)
    assert "Traceback" not in p.stderr
    assert p.returncode == 2 and says in p.stderr
    assert not (tmp_path / "w").exists() or not any((tmp_path / "w").iterdir())  # nothing half-written


@pytest.mark.slow
def test_train_all_with_every_tolerated_folder_case_at_once(mini, tmp_path):
    """The cases that are notes (or nothing) all in one folder: one training run says each note and trains."""
    tolerated = [c for c in FOLDER_CASES if c not in ERROR_CASES]
    for case in tolerated:
        FOLDER_CASES[case][0](mini)
    p = run_script("train_all.py", "--data", mini, "--models", "resnet10t", "--epochs", "1", "--img-size", "32",
                   "--recipe", "seed", "--no-pretrained", "--no-export", "--out", tmp_path / "w", "--quiet",
                   cwd=tmp_path)
    assert p.returncode == 0 and "Traceback" not in p.stderr, p.stderr[-2000:]
    assert (tmp_path / "w" / "resnet10t" / "metrics.json").is_file()
    for case in tolerated:
        assert FOLDER_CASES[case][2] in p.stdout + p.stderr, case


# -- members --------------------------------------------------------------------------------------------------------
class Boom:
    """A pickle that would create a file if it were ever unpickled."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def _config(folder: Path, **changes):
    cfg = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**cfg, **changes}))


def _unknown_backbone(folder, marker):
    _config(folder, backbone="resnet9000")


def _tampered_head(folder, marker):
    _config(folder, head_hidden=[7])


def _wrong_shape(folder, marker):
    BoneClassifier("resnet10t", img_size=32, head_hidden=[16]).save_pretrained(folder / "other")
    shutil.copy(folder / "other" / "model.safetensors", folder / "model.safetensors")
    shutil.rmtree(folder / "other")


def _truncated(folder, marker):
    data = (folder / "model.safetensors").read_bytes()
    (folder / "model.safetensors").write_bytes(data[: len(data) // 3])


def _broken_config(folder, marker):
    (folder / "config.json").write_text('{"backbone": "resnet10t", ')


def _pickle_beside(folder, marker):
    import pickle

    (folder / "pytorch_model.bin").write_bytes(pickle.dumps(Boom(marker)))


def _pickle_instead(folder, marker):
    _pickle_beside(folder, marker)
    (folder / "model.safetensors").unlink()


MEMBER_CASES = {
    "config names an unknown backbone": (_unknown_backbone, "is not registered"),
    "tampered config (head size)": (_tampered_head, "do not match its config.json"),
    "safetensors of the wrong shape": (_wrong_shape, "is not the one its config.json names"),
    "truncated safetensors": (_truncated, "damaged"),
    "config.json not JSON": (_broken_config, "not valid JSON"),
    "a .bin pickle beside the weights": (_pickle_beside, None),  # loads the safetensors, never the pickle
    "a .bin pickle instead of the weights": (_pickle_instead, "never loaded"),
}


@pytest.fixture
def member(trained_run, tmp_path):
    dst = tmp_path / "run" / "resnet10t"
    shutil.copytree(trained_run["out"] / "resnet10t", dst)
    return dst


@pytest.mark.parametrize("case", list(MEMBER_CASES))
def test_member_loaders(case, member, tmp_path):
    mutate, says = MEMBER_CASES[case]
    marker = tmp_path / "PICKLE_RAN"
    mutate(member, marker)
    if says is None:
        assert load_model(member) is not None
    else:
        with pytest.raises(MemberError, match=says) as info:
            load_model(member)
        assert str(member) in str(info.value)
    assert not marker.exists()


@pytest.mark.parametrize("case", list(MEMBER_CASES))
def test_predict_member_cases(case, member, trained_run, tmp_path):
    mutate, says = MEMBER_CASES[case]
    marker = tmp_path / "PICKLE_RAN"
    mutate(member, marker)
    out = tmp_path / "pred.csv"
    p = run_script("predict.py", "--data", trained_run["data"], "--models", member.parent, "-output", out,
                   "--quiet", cwd=tmp_path)
    assert "Traceback" not in p.stderr and not marker.exists()
    if says is None:
        assert p.returncode == 0 and out.is_file()
    else:
        assert p.returncode == 2 and says in p.stderr and not out.exists()


@pytest.mark.parametrize("case", list(MEMBER_CASES))
def test_demo_member_cases(case, member, bad_images, tmp_path):
    mutate, says = MEMBER_CASES[case]
    marker = tmp_path / "PICKLE_RAN"
    mutate(member, marker)
    with warnings.catch_warnings(record=True) as said:
        warnings.simplefilter("always")
        pool = MemberPool.from_source(member.parent)
        pool.choices()
    image = str(bad_images["16-bit PNG"])
    if says is None:
        assert 0 <= analyse([image], ["resnet10t"], "Grad-CAM", pool).probability <= 1
    elif "resnet10t" not in pool.folders:  # left out at start-up, the console says why
        assert any(says in str(w.message) for w in said), [str(w.message) for w in said]
    else:
        with pytest.raises(AnalysisError, match=says):
            analyse([image], ["resnet10t"], "Grad-CAM", pool)
    assert not marker.exists()


# -- many users ---------------------------------------------------------------------------------------------------
def _hooks(model) -> int:
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) + len(m._backward_hooks)
               + len(getattr(m, "_backward_pre_hooks", {})) for m in model.modules())


def test_cam_hooks_do_not_accumulate(pool, bad_images):
    """Grad-CAM hooks are removed after each analysis: nothing grows request after request."""
    image = str(bad_images["16-bit PNG"])
    analyse([image], TINY, "Grad-CAM", pool)
    before = {n: _hooks(pool.member(n).model) for n in TINY}
    for method in ("Grad-CAM", "EigenCAM", "LayerCAM", "Grad-CAM"):
        analyse([image], TINY, method, pool)
    assert {n: _hooks(pool.member(n).model) for n in TINY} == before


@pytest.mark.slow
def test_ten_concurrent_users_with_good_and_bad_uploads(pool, bad_images, trained_run):
    import socket
    import threading

    from gradio_client import Client, handle_file

    from demo.app import build_demo

    app = build_demo(pool, examples=False)
    assert app._queue.max_size == 16  # bounded: a flood is refused, not buffered without limit
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    app.launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True)
    good = sorted((trained_run["data"] / "test").glob("*_image1.*"))[:3]
    bad = [bad_images["text renamed .png"], bad_images["zero-byte"]]
    results: list[tuple[bool, str]] = []
    lock = threading.Lock()

    def user(i: int) -> None:
        client = Client(f"http://127.0.0.1:{port}/", verbose=False)
        for j in range(2):
            is_bad = (i + j) % 3 == 0
            f = bad[j % 2] if is_bad else good[(i + j) % len(good)]
            try:
                md, label, table, _ = client.predict([handle_file(str(f))], TINY, "Grad-CAM", api_name="/analyse")
                ok = not is_bad and "P(abnormal)" in md and [r[0] for r in table["data"]] == TINY
                out = (ok, md[:80])
            except Exception as exc:
                out = (is_bad and "Could not read" in str(exc) and f.name in str(exc), str(exc)[:200])
            with lock:
                results.append(out)

    try:
        threads = [threading.Thread(target=user, args=(i,)) for i in range(10)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=300)
    finally:
        app.close()
    assert len(results) == 20 and all(ok for ok, _ in results), [m for ok, m in results if not ok]
