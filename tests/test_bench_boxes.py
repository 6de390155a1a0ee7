"""bench/boxes_heldout.py's claims at tiny size: the grid ceiling counts a hit exactly where some cell's peak pixel is
within the pointing game's tolerance of a box, and the reference (energy-share) loss is the old formula through the
``BoxLoss.term`` seam. The numbers themselves come from the bench, never from here."""

import json

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
    """One cell-sized box on a 12 x 12 grid: the target map (1 on the cells near the box, below 0 elsewhere) shown as
    pytorch-grad-cam shows it puts most of its mass near the box: far above chance (the box's share), below 1 (the
    bilinear resize spreads it past the box's edges)."""
    row = heldout.grid_ceiling(_coco(tmp_path, [[160.0, 160.0, 32.0, 32.0]]), [384])[0]
    chance = 32 * 32 / 384**2
    assert row["grid"] == "12x12" and 0.1 < row["target map energy"] < 1.0
    assert row["x chance"] == pytest.approx(row["target map energy"] / chance) and row["x chance"] > 10


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


def _fake_member(folder, val_ids, calibration_ids):
    folder.mkdir(parents=True)
    (folder / "config.json").write_text("{}")
    for name, ids in (("val_predictions.csv", val_ids), ("calibration_predictions.csv", calibration_ids)):
        (folder / name).write_text("id,part,label,prob\n" + "".join(f"{i},HAND,0,0.5\n" for i in ids))


def test_boxes_fit_holds_out_a_members_validation_and_calibration_studies(tmp_path):
    fit = bench_module("boxes_fit")
    _fake_member(tmp_path / "a", ["HAND_01", "HAND_02"], ["HAND_03"])
    assert fit.held_out_ids(tmp_path / "a") == {"HAND_01", "HAND_02", "HAND_03"}


@pytest.mark.parametrize("second", [(["HAND_01"], ["HAND_04"]), None])
def test_boxes_fit_refuses_members_that_split_differently_or_not_at_all(tmp_path, monkeypatch, capsys, second):
    """Members holding out different studies (or none: unknown) would mislabel what each trained on: an error."""
    fit = bench_module("boxes_fit")
    if second is None:
        (tmp_path / "run" / "a").mkdir(parents=True)
        (tmp_path / "run" / "a" / "config.json").write_text("{}")
    else:
        _fake_member(tmp_path / "run" / "a", ["HAND_01"], ["HAND_03"])
        _fake_member(tmp_path / "run" / "b", *second)
    monkeypatch.setattr("sys.argv", ["boxes_fit.py", str(tmp_path / "run"), "--boxes", str(tmp_path / "x.json"),
                                     "--data", str(tmp_path)])
    with pytest.raises(SystemExit) as exit_:
        fit.main()
    assert exit_.value.code == 2
    assert ("different studies" if second else "held out") in capsys.readouterr().err
