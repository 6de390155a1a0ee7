"""CAMs against ground-truth boxes: the box geometry, pointing game, energy share, chance levels, COCO matching."""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest

from zoo.data.io import resize_pad
from zoo.localisation import (
    FUSED,
    boxes_by_image,
    chance_levels,
    energy_share,
    load_annotations,
    pad_geometry,
    pointing_hit,
    summarise,
)

H, W, S = 200, 100, 64  # a portrait film, padded left and right in the square model input
BOX = np.array([[30.0, 120.0, 20.0, 20.0]])  # COCO x, y, w, h in stored pixels: the planted lesion


def _lesion_image() -> np.ndarray:
    img = np.full((H, W), 0.3, np.float32)
    x, y, w, h = BOX[0].astype(int)
    img[y : y + h, x : x + w] = 1.0
    return img


def _peak(row: float, col: float, sigma: float = 2.0) -> np.ndarray:
    r, c = np.mgrid[0:S, 0:S]
    return np.exp(-((r - row) ** 2 + (c - col) ** 2) / (2 * sigma**2)).astype(np.float32)


def test_boxes_land_where_the_resize_and_pad_put_their_pixels():
    x = resize_pad(_lesion_image(), S)
    rows, cols = np.nonzero(x > 200)
    x0, y0, x1, y1 = pad_geometry(H, W, S).to_input(BOX)[0]
    assert x0 == pytest.approx(cols.min(), abs=1) and x1 == pytest.approx(cols.max() + 1, abs=1)
    assert y0 == pytest.approx(rows.min(), abs=1) and y1 == pytest.approx(rows.max() + 1, abs=1)
    assert pad_geometry(H, W, S).left == 16  # the pad is not ignored: 100 px wide -> 32 px, centred


def test_a_cam_peaking_in_the_box_points_and_one_outside_does_not():
    geo = pad_geometry(H, W, S)
    x0, y0, x1, y1 = geo.to_input(BOX)[0]
    inside = _peak((y0 + y1) / 2, (x0 + x1) / 2)
    assert pointing_hit(inside, BOX, geo)
    far = _peak(5, 40)  # the top of the film, ~100 stored px from the lesion
    assert not pointing_hit(far, BOX, geo)
    # 10 stored px right of the box (3.2 input px): a hit with the usual 15 px tolerance, a miss with 5
    near = _peak((y0 + y1) / 2, x1 + 10 * geo.sx)
    assert pointing_hit(near, BOX, geo) and not pointing_hit(near, BOX, geo, tolerance=5)
    assert not pointing_hit(np.zeros((S, S)), BOX, geo)  # a flat map points nowhere


def test_energy_share_math():
    geo = pad_geometry(H, W, S)
    x0, y0, x1, y1 = geo.to_input(BOX)[0]
    r, c = np.mgrid[0:S, 0:S] + 0.5
    box = ((c >= x0) & (c <= x1) & (r >= y0) & (r <= y1)).astype(np.float32)
    assert energy_share(box, BOX, geo) == pytest.approx(1.0)
    assert energy_share(1 - box, BOX, geo) == pytest.approx(0.0)
    assert energy_share(np.ones((S, S)), BOX, geo) == pytest.approx(box.mean())  # uniform: the box's share
    assert energy_share(0.5 * box + 0.5 * (1 - box), BOX, geo) == pytest.approx(box.mean())
    assert math.isnan(energy_share(np.zeros((S, S)), BOX, geo))


def test_chance_levels_are_the_boxes_share_of_the_image():
    point, energy = chance_levels(BOX, H, W)
    assert energy == pytest.approx(400 / (H * W))
    # within 15 px of a 20x20 box: 50x50 minus the four corners outside the quarter circles
    assert point == pytest.approx((50 * 50 - 4 * 15**2 + math.pi * 15**2) / (H * W), rel=0.02)


def _coco(tmp_path, file_name="test/HAND_a_image1.png"):
    f = tmp_path / "ann.coco.json"
    f.write_text(json.dumps({
        "images": [{"id": 1, "file_name": file_name, "width": W, "height": H},
                   {"id": 2, "file_name": "test/HAND_b_image1.png", "width": W, "height": H}],
        "annotations": [{"id": 1, "image_id": 1, "category_id": 1, "bbox": BOX[0].tolist(), "area": 400,
                         "iscrowd": 0, "segmentation": [[30, 120, 50, 120, 50, 140, 30, 140]]}],
        "categories": [{"id": 1, "name": "fracture"}]}))
    return f


def test_coco_annotations_match_images_by_file_name(tmp_path):
    coco = load_annotations(_coco(tmp_path))
    root = tmp_path / "data"
    paths = [str(root / "test" / "HAND_a_image1.png"), str(root / "test" / "HAND_b_image1.png"),
             str(root / "test" / "HAND_c_image1.png")]
    found = boxes_by_image(coco, paths, root)
    assert list(found) == [paths[0]]  # b has no annotation, c is not in the file
    boxes, h, w = found[paths[0]]
    np.testing.assert_allclose(boxes, BOX) and (h, w) == (H, W)
    assert list(boxes_by_image(coco, [str(tmp_path / "elsewhere" / "HAND_a_image1.png")])) == [
        str(tmp_path / "elsewhere" / "HAND_a_image1.png")]  # base name when the folder differs


def test_annotation_errors_are_one_clear_line(tmp_path):
    with pytest.raises(FileNotFoundError, match="no such file"):
        load_annotations(tmp_path / "missing.json")
    bad = tmp_path / "bad.json"
    bad.write_text("[1, 2]")
    with pytest.raises(ValueError, match="not a COCO annotation file"):
        load_annotations(bad)


def test_summary_has_wilson_and_bootstrap_intervals_beside_chance():
    rng = np.random.default_rng(0)
    rec = pd.DataFrame({"path": [f"p{i}" for i in range(40)] * 2, "member": ["a"] * 40 + [FUSED] * 40,
                        "method": "gradcam", "hit": rng.random(80) < 0.6, "energy": rng.random(80) * 0.5,
                        "chance_point": 0.1, "chance_energy": 0.05, "road": rng.normal(size=80),
                        "road_random": 0.0})
    s = summarise(rec).set_index("member")
    for m in ("a", FUSED):
        r = s.loc[m]
        assert r["pointing_lo"] < r["pointing"] < r["pointing_hi"]
        assert r["energy_lo"] < r["energy"] < r["energy_hi"]
        assert r["pointing_chance"] == pytest.approx(0.1) and r["energy_chance"] == pytest.approx(0.05)
        assert r["images"] == 40 and r["road_images"] == 40
