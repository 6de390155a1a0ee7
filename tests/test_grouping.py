"""Patients never straddle a split (MURA's patientNNNNN, the competition csv's optional ``patient`` column), MURA csv
paths stay inside the dataset root, and every bad label row is named at once."""

import re

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from zoo.data import LayoutError, fold_split, load_dataset, read_label_csv, split_by_study, studies

N_PATIENTS = 36


def _png(path, value=128):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((8, 8), value, np.uint8)).save(path)


def _patients(seed=0):
    """``(patient number, part, [labels of its studies])``: 1 to 4 studies per patient, mixed labels."""
    rng = np.random.default_rng(seed)
    return [(k, ("HAND", "WRIST")[k % 2], [int(v) for v in rng.random(1 + k % 4) < 0.4]) for k in range(N_PATIENTS)]


def _mura(root):
    mura = root / "MURA-v1.1"
    for split, patients in (("train", _patients()), ("valid", _patients(1)[:4])):
        paths, labelled = [], []
        for k, part, labels in patients:
            for s, label in enumerate(labels, 1):
                study = f"MURA-v1.1/{split}/XR_{part}/patient{k + (0 if split == 'train' else 1000):05d}/" \
                        f"study{s}_{'positive' if label else 'negative'}/"
                paths.append(study + "image1.png")
                _png(root / study / "image1.png", 200 if label else 50)
                labelled.append((study, label))
        pd.Series(paths).to_csv(mura / f"{split}_image_paths.csv", index=False, header=False)
        pd.DataFrame(labelled).to_csv(mura / f"{split}_labeled_studies.csv", index=False, header=False)
    return mura


def _competition(root, with_patient=True):
    rows = []
    for k, part, labels in _patients():
        for s, label in enumerate(labels):
            sid = f"{part}_p{k:02d}s{s}"
            _png(root / "train" / f"{sid}_image1.png", 200 if label else 50)
            rows.append({"id": sid, "label": label, "patient": f"P{k:03d}"})
    rows.append({"id": "HAND_nopatient", "label": 1, "patient": ""})  # no patient named: its own group
    _png(root / "train" / "HAND_nopatient_image1.png")
    df = pd.DataFrame(rows)
    df[["id", "label", "patient"] if with_patient else ["id", "label"]].to_csv(root / "train.csv", index=False)
    _png(root / "test" / "WRIST_t1_image1.png")
    _png(root / "test" / "WRIST_t2_image1.png")
    pd.DataFrame({"id": ["WRIST_t1", "WRIST_t2"], "label": [0, 1], "patient": ["Q1", "Q1"]}).to_csv(
        root / "test_labels.csv", index=False)
    return dict(zip(df["id"], df["patient"].replace("", None).fillna(df["id"])))


def _assert_patients_never_straddle(train, patient_of):
    """Every split and every fold of ``train`` keeps each patient (``patient_of``: study id -> patient, worked out
    by the test, not read from the table) on one side; seeded and stratified."""
    labelled = set(train.loc[train["label"].notna(), "id"])
    for seed in range(4):
        tr, va = split_by_study(train, 0.25, seed)
        tr_p, va_p = {patient_of[i] for i in tr["id"]}, {patient_of[i] for i in va["id"]}
        assert not tr_p & va_p, f"seed {seed}: patients on both sides: {sorted(tr_p & va_p)}"
        assert set(tr["id"]) | set(va["id"]) == labelled
        assert va.groupby("id")["label"].first().nunique() == 2  # both classes validated
        assert 0.1 < va["id"].nunique() / len(labelled) < 0.4
        again = split_by_study(train, 0.25, seed)[1]
        assert again["id"].tolist() == va["id"].tolist()  # deterministic per seed
    assert len({tuple(sorted(set(split_by_study(train, 0.25, s)[1]["id"]))) for s in range(4)}) > 1
    for folds in (3, 4):
        seen = []
        for k in range(folds):
            tr, va = fold_split(train, folds, k, seed=7)
            tr_p, va_p = {patient_of[i] for i in tr["id"]}, {patient_of[i] for i in va["id"]}
            assert not tr_p & va_p, f"fold {k}/{folds}: patients on both sides: {sorted(tr_p & va_p)}"
            assert set(tr["id"]) | set(va["id"]) == labelled
            assert va.groupby("id")["label"].first().nunique() == 2
            assert fold_split(train, folds, k, seed=7)[1]["id"].tolist() == va["id"].tolist()
            seen += sorted(set(va["id"]))
        assert sorted(seen) == sorted(labelled)  # every study validated exactly once


def test_mura_splits_and_folds_keep_a_patients_studies_on_one_side(tmp_path):
    ds = load_dataset(_mura(tmp_path))
    assert ds.grouping == "patient" and "grouped by patient" in ds.summary()
    patient_of = {i: re.search(r"patient\d+", i)[0] for i in ds.train["id"]}
    assert ds.train["patient"].tolist() == ds.train["id"].map(patient_of).tolist()
    assert studies(ds.train)["patient"].nunique() == N_PATIENTS
    _assert_patients_never_straddle(ds.train, patient_of)


def test_competition_patient_column_groups_the_same_way(tmp_path):
    patient_of = _competition(tmp_path)
    ds = load_dataset(tmp_path)
    assert ds.grouping == "patient"
    assert ds.train.groupby("id")["patient"].first().to_dict() == patient_of
    assert set(ds.test["patient"]) == {"Q1"}  # test_labels.csv's column is read too
    _assert_patients_never_straddle(ds.train, patient_of)


def test_without_a_patient_column_each_study_is_its_own_group_as_before(tmp_path):
    _competition(tmp_path, with_patient=False)
    ds = load_dataset(tmp_path)
    assert ds.grouping == "study" and "grouped by patient" not in ds.summary()
    assert (ds.train["patient"] == ds.train["id"]).all()
    old_table = ds.train.drop(columns="patient")  # what the loader gave before patients were read
    for seed in range(3):
        assert split_by_study(ds.train, 0.25, seed)[1]["id"].tolist() == \
            split_by_study(old_table, 0.25, seed)[1]["id"].tolist()
        assert fold_split(ds.train, 3, seed, seed=seed)[1]["id"].tolist() == \
            fold_split(old_table, 3, seed, seed=seed)[1]["id"].tolist()


@pytest.mark.slow
def test_a_member_records_its_grouping_and_validates_unseen_patients(tmp_path):
    import json

    from zoo.train import TrainConfig, Trainer

    ds = load_dataset(_mura(tmp_path))
    cfg = TrainConfig(backbone="resnet10t", img_size=32, batch_size=16, lr=1e-3, head_hidden=[8], epochs=1,
                      cache_dir="", quiet=True, seed=2, export=False)
    trainer = Trainer(cfg, ds, tmp_path / "member")
    trainer.fit()
    assert json.loads((tmp_path / "member" / "config.json").read_text())["training"]["grouping"] == "patient"
    val = pd.read_csv(tmp_path / "member" / "val_predictions.csv")
    patient = {i: re.search(r"patient\d+", i)[0] for i in ds.train["id"]}
    assert not {patient[i] for i in val["id"]} & {patient[i] for i in trainer.train_df["id"]}


def test_mura_csv_paths_outside_the_dataset_root_are_skipped_not_read(tmp_path):
    mura = _mura(tmp_path)
    outside = tmp_path / "elsewhere" / "XR_HAND" / "patient09999" / "study1_positive"
    _png(outside / "image1.png")
    (mura / "train" / "XR_HAND" / "patient09998" / "study1_positive").mkdir(parents=True)
    (mura / "train" / "XR_HAND" / "patient09998" / "study1_positive" / "image1.png").symlink_to(
        outside / "image1.png")
    paths = (mura / "train_image_paths.csv").read_text().splitlines()
    hostile = ["MURA-v1.1/../elsewhere/XR_HAND/patient09999/study1_positive/image1.png",
               "../elsewhere/XR_HAND/patient09999/study1_positive/image1.png",
               "MURA-v1.1/train/XR_HAND/patient00000/study1_negative/../../../../../elsewhere/XR_HAND/patient09999/"
               "study1_positive/image1.png",
               str(outside / "image1.png"),
               "MURA-v1.1/train/XR_HAND/patient09998/study1_positive/image1.png"]  # a symlink out of the root
    (mura / "train_image_paths.csv").write_text("\n".join(paths + hostile) + "\n")
    with pytest.warns(UserWarning, match="5 path"):
        ds = load_dataset(mura)
    assert len(ds.train) == len(paths)
    root = mura.resolve()
    assert all(__import__("pathlib").Path(p).resolve().is_relative_to(root) for p in ds.train["path"])
    assert not ds.train["patient"].isin(["patient09999", "patient09998"]).any()
    note = next(n for n in ds.notes if "outside the dataset root" in n)
    assert "skipped, not read" in note and "elsewhere" in note


def test_every_bad_label_row_is_named_at_once(tmp_path):
    rows = [f"HAND_s{i:03d},{'abnormal' if i % 2 else 0}" for i in range(90)]  # 45 bad rows, on lines 3, 5, ...
    (tmp_path / "train.csv").write_text("id,label\n" + "\n".join(rows) + "\n")
    with pytest.raises(LayoutError) as err:
        read_label_csv(tmp_path / "train.csv")
    msg = str(err.value)
    assert "45 row(s)" in msg and "is not 0, 1, NA or empty" in msg
    named = [int(n) for n in re.findall(r"line (\d+)", msg)]
    assert named == list(range(3, 3 + 2 * 20, 2))  # the first 20 bad rows, in order
    assert "and 25 more" in msg and "'HAND_s001'" in msg and "'HAND_s039'" in msg and "HAND_s041" not in msg


def test_conflicting_rows_are_all_named(tmp_path):
    (tmp_path / "train.csv").write_text("id,label,patient\na,0,P1\na,1,P1\nb,1,P2\nb,1,P3\nc,0,P4\n")
    with pytest.raises(LayoutError, match=r"2 conflict.*'a' has conflicting labels.*'b' has conflicting patients"):
        read_label_csv(tmp_path / "train.csv")
