"""bench/boxes_heldout.py's claims at tiny size: the grid ceiling counts a hit exactly where some cell's peak pixel is
within the pointing game's tolerance of a box, and the reference (energy-share) loss is the old formula through the
``BoxLoss.term`` seam. The numbers themselves come from the bench, never from here."""

import json
from pathlib import Path

import pytest
import torch
from conftest import bench_module

from zoo.boxes import BoxLoss, peak_pixels
from zoo.localisation import TOLERANCE


@pytest.fixture(scope="module")
def heldout():
    return bench_module("boxes_heldout")


def _coco(tmp_path, boxes):
    images = [{"id": i, "file_name": f"HAND_{i}_image1.png", "height": 384, "width": 384} for i in range(len(boxes))]
    annotations = [{"id": i, "image_id": i, "bbox": b, "category_id": 1} for i, b in enumerate(boxes)]
    path = tmp_path / "boxes.coco.json"
    path.write_text(json.dumps({"images": images, "annotations": annotations, "categories": [{"id": 1}]}))
    return path


def test_grid_ceiling_hits_only_where_a_peak_pixel_is_within_the_tolerance(heldout, tmp_path):
    first, _ = peak_pixels(3, 96)
    near = float(first[1]) * 4  # a cell's peak pixel at 96 px, in the 384-px stored image
    far = near + 16 + 2 * TOLERANCE  # between peak pixels, farther than the tolerance from any
    coco = _coco(tmp_path, [[near, near, 2.0, 2.0], [far, far, 2.0, 2.0]])
    rows = heldout.grid_ceiling(coco, [96])
    assert rows[0]["images"] == 2 and rows[0]["best pointing game"] == pytest.approx(0.5)
    whole = _coco(tmp_path, [[0.0, 0.0, 384.0, 384.0]])
    assert heldout.grid_ceiling(whole, [32])[0]["best pointing game"] == pytest.approx(1.0)  # 1 x 1: pixel 0


def test_grid_ceiling_energy_is_that_of_the_map_the_loss_asks_for(heldout, tmp_path):
    """A box that is exactly cell 5 of a 12 x 12 grid (pixels 160-192; the neighbours' peak pixels are 16 px away,
    past the 15 px tolerance): the loss's target map is that one cell, which the bilinear resize spreads over 3 x 3
    cells as a tent, (3/4)^2 = 0.5625 of its mass on the cell itself, energy on the bare box, 81x its 1/144 share (on
    the tolerance-grown box it would be ~1)."""
    row = heldout.grid_ceiling(_coco(tmp_path, [[160.0, 160.0, 32.0, 32.0]]), [384])[0]
    assert row["grid"] == "12x12" and row["best pointing game"] == 1.0
    assert row["target map energy"] == pytest.approx(0.5625, abs=1e-6)
    assert row["x chance"] == pytest.approx(81.0, abs=1e-4)


def test_the_reference_energy_loss_is_one_minus_the_share_inside_the_box(heldout):
    from zoo.model import BoneClassifier

    model = BoneClassifier("resnet10t", img_size=64, head_hidden=[8])
    loss = heldout.energy_reference(BoxLoss)(lambda logits, y: 0 * logits.sum(), model, weight=1.0)
    cam = torch.zeros(1, 2, 2)
    cam[0, 0, 0] = 1.0
    mask = torch.zeros(1, 64, 64)
    mask[0, :32, :32] = 1
    inside = float(loss.term(cam, mask))
    outside = float(loss.term(torch.flip(cam, (1, 2)), mask))
    assert 0 <= inside < 0.5 < outside <= 1
    assert float(loss.term(cam, torch.ones(1, 64, 64))) == pytest.approx(0.0, abs=1e-6)  # all of it inside
    loss.remove()


def _fake_member(folder, val_ids, calibration_ids, boxes=None):
    """A member folder as boxes_fit reads it: config.json (with the boxes file's record when ``boxes`` is given), its
    validation and calibration predictions, and a (placeholder) model.safetensors, which makes it a member folder."""
    from zoo.localisation import annotations_record

    folder.mkdir(parents=True)
    training = {"boxes": None if boxes is None else {**annotations_record(boxes), "annotated_train_positives": 1}}
    (folder / "config.json").write_text(json.dumps({"backbone": "resnet10t", "training": training}))
    (folder / "model.safetensors").touch()
    for name, ids in (("val_predictions.csv", val_ids), ("calibration_predictions.csv", calibration_ids)):
        if ids is not None:
            (folder / name).write_text("id,part,label,prob\n" + "".join(f"{i},HAND,0,0.5\n" for i in ids))
    return folder


def test_boxes_fit_holds_out_a_members_validation_and_calibration_studies(tmp_path):
    fit = bench_module("boxes_fit")
    _fake_member(tmp_path / "a", ["HAND_01", "NA"], ["HAND_03"])
    assert fit.held_out_ids(tmp_path / "a") == {"HAND_01", "NA", "HAND_03"}  # an id "NA" stays an id
    from zoo.members import members_in  # what boxes_fit reads RUN with

    assert members_in(tmp_path / "a") == [tmp_path / "a"]  # a member folder is a run of one
    assert members_in(tmp_path) == [tmp_path / "a"]


@pytest.mark.parametrize("case, message", [
    ("split", "different studies"), ("unknown", "held out is unknown"), ("no boxes", "trained without --boxes"),
    ("other boxes", "another boxes file"), ("pseudonyms", "not in the training split")])
def test_boxes_fit_refuses_what_would_mislabel_trained_on_and_held_out(tmp_path, case, message):
    """Whatever would put an image in the wrong group (members split differently or not at all, a run without the
    box term or with another boxes file, held-out ids that are not this dataset's) is an error, not a table."""
    fit = bench_module("boxes_fit")
    boxes = _coco(tmp_path, [[10.0, 10.0, 5.0, 5.0]])
    other = tmp_path / "other.coco.json"
    other.write_text(boxes.read_text().replace("384", "385"))
    train_ids = {"HAND_01", "HAND_02", "HAND_03", "HAND_04"}
    a = _fake_member(tmp_path / "run" / "a", ["HAND_01"], ["HAND_03"], boxes)
    members = [a]
    if case == "split":
        members.append(_fake_member(tmp_path / "run" / "b", ["HAND_01"], ["HAND_04"], boxes))
    elif case == "unknown":
        members = [_fake_member(tmp_path / "run" / "c", None, None, boxes)]
    elif case == "no boxes":
        members = [_fake_member(tmp_path / "run" / "c", ["HAND_01"], ["HAND_03"])]
    elif case == "other boxes":
        members = [_fake_member(tmp_path / "run" / "c", ["HAND_01"], ["HAND_03"], other)]
    else:
        train_ids = {"HAND_01", "HAND_02"}
    assert fit.check_members([a], boxes, {"HAND_01", "HAND_03"}) == {"HAND_01", "HAND_03"}
    with pytest.raises(ValueError, match=message):
        fit.check_members(members, boxes, train_ids)


def test_boxes_fit_says_what_is_missing(tmp_path, monkeypatch, capsys):
    fit = bench_module("boxes_fit")
    monkeypatch.setattr("sys.argv", ["boxes_fit.py", str(tmp_path / "nowhere"), "--boxes", "x.json",
                                     "--data", str(tmp_path)])
    with pytest.raises(SystemExit) as exit_:
        fit.main()
    assert exit_.value.code == 2 and "no run folder" in capsys.readouterr().err
    monkeypatch.setattr("sys.argv", ["boxes_fit.py", str(tmp_path), "--boxes", "x.json",
                                     "--data", str(tmp_path / "no-data")])
    with pytest.raises(SystemExit) as exit_:
        fit.main()
    assert exit_.value.code == 2 and "no dataset" in capsys.readouterr().err


# a localisation.csv as zoo evaluate writes it: the fused map's row, its pointing game given
LOCALISATION = ("member,method,images,pointing,pointing_lo,pointing_hi,pointing_chance,energy,energy_lo,energy_hi,"
                "energy_chance\nensemble (fused),gradcam,2,{pointing},0.1,0.9,0.02,0.05,0.04,0.06,0.005\n")


def explain_data(tmp_path) -> Path:
    """A dataset folder as ``bench/explain.py --boxes`` reads it: annotations and four labelled test studies A-D."""
    data = tmp_path / "data"
    data.mkdir()
    (data / "annotations.coco.json").write_text("{}")
    (data / "test_labels.csv").write_text("id,label\nA,1\nB,0\nC,1\nD,0\n")
    return data


def test_explain_rescore_refuses_runs_never_scored_instead_of_training_them(tmp_path, monkeypatch, capsys):
    """``bench/explain.py --boxes --rescore`` scores runs already trained; where one is missing it says which and
    trains nothing (training would take hours and change what the table compares)."""
    explain = bench_module("explain")
    data = explain_data(tmp_path)
    scored = tmp_path / "out" / "seed0-plain" / "report"
    scored.mkdir(parents=True)
    (scored / "localisation.csv").write_text("member\n")
    trained = []
    monkeypatch.setattr(explain, "train_and_score", lambda *a, **k: trained.append(a))
    monkeypatch.setattr("sys.argv", ["explain.py", "--boxes", "--rescore", "--data", str(data), "--out",
                                     str(tmp_path / "out"), "--seeds", "0"])
    assert explain.main() == 2
    err = capsys.readouterr().err
    assert "seed0-boxes" in err and "seed0-plain" not in err and trained == []


def test_explain_rescore_scores_every_run_again_and_trains_none(tmp_path, monkeypatch, capsys):
    """Both arms there: each is scored again (``zoo evaluate``), none trained, and the table says each arm's epochs
    (a reused arm may have trained another budget). ``--rescore`` without ``--boxes`` is refused."""
    explain = bench_module("explain")
    data = explain_data(tmp_path)
    loc = LOCALISATION.format(pointing=0.5)
    for arm, epochs, probs in (("plain", 32, "0.9,0.2,0.6,0.4"), ("boxes", 48, "0.8,0.3,0.7,0.1")):
        run = tmp_path / "out" / f"seed0-{arm}"
        (run / "report").mkdir(parents=True)
        (run / "report" / "localisation.csv").write_text(loc)
        rows = "".join(f"{i},{p}\n" for i, p in zip("ABCD", probs.split(","), strict=True))
        (run / "report" / "predictions.csv").write_text("id,label\n" + rows)
        (run / "m").mkdir()
        (run / "m" / "metrics.json").write_text(json.dumps({"epochs_run": epochs}))
    scored, trained = [], []
    monkeypatch.setattr(explain, "score", lambda args, data, run: scored.append(run.name))
    monkeypatch.setattr(explain, "train_and_score", lambda *a, **k: trained.append(a))
    monkeypatch.setattr(explain, "train_split_boxes", lambda data, out: out / "train_boxes.coco.json")
    argv = ["explain.py", "--boxes", "--rescore", "--data", str(data), "--out", str(tmp_path / "out"), "--seeds", "0"]
    monkeypatch.setattr("sys.argv", argv)
    assert explain.main() == 0
    assert scored == ["seed0-plain", "seed0-boxes"] and trained == []
    table = __import__("pandas").read_csv(tmp_path / "out" / "boxes_comparison.csv")
    assert dict(zip(table["arm"], table["epochs"].astype(str), strict=True)) == {"without": "32", "with boxes": "48"}
    monkeypatch.setattr("sys.argv", [a for a in argv if a != "--boxes"])
    with pytest.raises(SystemExit) as exit_:
        explain.main()
    assert exit_.value.code == 2 and "--rescore is for --boxes" in capsys.readouterr().err


def test_explain_scores_both_arms_the_same_way_when_told(tmp_path, monkeypatch, capsys):
    """``zoo evaluate`` picks each run's combiner and graph by itself, so two arms may be scored differently;
    ``--backend torch --ensemble mean`` scores both arms with those, into ``report-torch-mean`` beside the shipped
    ``report``, and the table comes from those reports. A trained run is scored, not retrained; a run not yet trained
    is trained and scored the shipped way first; a report of that way older than the shipped one (the run was
    retrained or rescored since) is scored again. Every command is one ``zoo evaluate`` accepts."""
    import os

    from zoo.cli.evaluate import get_args_parser

    explain = bench_module("explain")
    data = explain_data(tmp_path)
    plain = tmp_path / "out" / "seed0-plain"  # trained and scored, with a stale report of the fixed way
    for folder, pointing in (("report-torch-mean", 0.9), ("report", 0.1)):
        (plain / folder).mkdir(parents=True)
        (plain / folder / "localisation.csv").write_text(LOCALISATION.format(pointing=pointing))
    os.utime(plain / "report-torch-mean" / "localisation.csv", (1, 1))
    calls = []

    def run(cmd, **kwargs):  # train_all.py, or zoo evaluate writing into --report-dir
        if cmd[1].endswith("train_all.py"):
            calls.append(("train", Path(cmd[cmd.index("--out") + 1]).name))
            return
        args = get_args_parser().parse_args(cmd[4:])
        fixed = (args.backend, args.ensemble) == ("torch", "mean")
        assert fixed or (args.backend, args.ensemble) == ("auto", "auto")  # the shipped scoring: zoo's own choices
        report = Path(args.report_dir)
        assert report.name == ("report-torch-mean" if fixed else "report")
        calls.append((report.name, Path(args.run).name))
        report.mkdir(parents=True, exist_ok=True)
        (report / "localisation.csv").write_text(LOCALISATION.format(pointing=0.7 if fixed else 0.1))
        (report / "predictions.csv").write_text("id,label\nA,0.9\nB,0.2\nC,0.6\nD,0.4\n")

    monkeypatch.setattr(explain.subprocess, "run", run)
    monkeypatch.setattr(explain, "train_split_boxes", lambda data, out: out / "train_boxes.coco.json")
    argv = ["explain.py", "--boxes", "--backend", "torch", "--ensemble", "mean", "--data", str(data), "--out",
            str(tmp_path / "out"), "--seeds", "0"]
    monkeypatch.setattr("sys.argv", argv)
    assert explain.main() == 0
    assert calls == [("report-torch-mean", "seed0-plain"), ("train", "seed0-boxes"), ("report", "seed0-boxes"),
                     ("report-torch-mean", "seed0-boxes")]
    table = __import__("pandas").read_csv(tmp_path / "out" / "boxes_comparison-torch-mean.csv")
    assert set(table["_pointing"]) == {0.7}  # read from the reports of the fixed way, none stale
    assert "--ensemble mean" in capsys.readouterr().out
    assert not (tmp_path / "out" / "boxes_comparison.csv").exists()
    calls.clear()
    assert explain.main() == 0 and calls == []  # all scored that way since: nothing runs again
    monkeypatch.setattr("sys.argv", [a for a in argv if a != "--boxes"])
    with pytest.raises(SystemExit) as exit_:
        explain.main()
    assert exit_.value.code == 2 and "--backend and --ensemble are for --boxes" in capsys.readouterr().err


def test_cam_order_reads_only_the_order_of_a_map():
    """bench/cam_order.py's measures: a map that is the box scores 1, its inverse 0, a flat map 0.5 (ties), and any
    increasing transform (squaring, which moves the energy share) leaves both unchanged."""
    import numpy as np

    order = bench_module("cam_order").order_scores
    inside = np.zeros((20, 20), bool)
    inside[2:8, 3:12] = True  # 54 of 400 pixels: the top 2% (8 pixels) can all lie inside
    assert order(inside.astype(float), inside) == {"auroc": 1.0, "top_share": 1.0}
    assert order(1.0 - inside, inside)["auroc"] == 0.0 and order(1.0 - inside, inside)["top_share"] == 0.0
    assert order(np.full((20, 20), 0.3), inside)["auroc"] == 0.5
    cam = np.random.default_rng(0).random((20, 20)) + inside * 0.4
    assert order(cam ** 2, inside) == pytest.approx(order(cam, inside))
    energy = lambda m: m[inside].sum() / m.sum()  # noqa: E731
    assert energy(cam ** 2) > energy(cam)  # what the energy share does with the same order
    assert np.isnan(order(cam, np.zeros_like(inside))["auroc"])
