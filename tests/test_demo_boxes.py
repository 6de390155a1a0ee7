"""The demo draws an upload's ground-truth boxes (``--annotations``, COCO) over its CAM panels, at the panel's scale,
and says so in the summary; an upload the annotations do not name renders as without them. A tiny saved member
(resnet10t, 32 px); no training, no network."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from demo.app import BOX_COLOUR, MemberPool, analyse, summary_markdown
from zoo.model import BoneClassifier

# A 64 x 32 (w x h) image into a 32 px member: scale 0.5, 32 x 16, padded 8 rows top and bottom. The COCO box
# [x 16, y 8, w 16, h 16] lands on input columns 8..15 and rows 4+8 .. 11+8 = 12..19.
BOX = [16, 8, 16, 16]
ROWS, COLS = slice(12, 20), slice(8, 16)


def ring() -> np.ndarray:
    """The 2-px outline inside the mapped box, on the 32 x 32 panel."""
    inside = np.zeros((32, 32), bool)
    inside[ROWS, COLS] = True
    inner = np.zeros((32, 32), bool)
    inner[ROWS.start + 2:ROWS.stop - 2, COLS.start + 2:COLS.stop - 2] = True
    return inside & ~inner


@pytest.fixture
def folders(tmp_path) -> dict[str, Path]:
    torch.manual_seed(0)
    return {"m32": BoneClassifier("resnet10t", img_size=32, head_hidden=[8]).save_member(tmp_path / "members" / "m32")}


@pytest.fixture
def uploads(tmp_path) -> dict[str, str]:
    """Two uploads in a Gradio-like temp folder (the annotations name images by base name only)."""
    d = tmp_path / "gradio-tmp" / "5e1d"
    d.mkdir(parents=True)
    rng = np.random.default_rng(0)
    out = {}
    for name in ("hand_fracture.png", "hand_other.png"):
        Image.fromarray((rng.random((32, 64)) * 255).astype(np.uint8)).save(d / name)
        out[name] = str(d / name)
    return out


@pytest.fixture
def coco_file(tmp_path) -> Path:
    path = tmp_path / "annotations.coco.json"
    path.write_text(json.dumps({
        "images": [{"id": 1, "file_name": "test/hand_fracture.png", "height": 32, "width": 64},
                   {"id": 2, "file_name": "test/not_uploaded.png", "height": 32, "width": 64}],
        "annotations": [{"id": 1, "image_id": 1, "category_id": 1, "bbox": BOX, "area": 256, "iscrowd": 0},
                        {"id": 2, "image_id": 2, "category_id": 1, "bbox": [0, 0, 4, 4], "area": 16, "iscrowd": 0}],
        "categories": [{"id": 1, "name": "fracture"}]}))
    return path


def test_the_ground_truth_box_is_outlined_on_each_cam_panel_at_the_mapped_edges(folders, uploads, coco_file):
    plain = analyse([uploads["hand_fracture.png"]], ["m32"], pool=MemberPool(dict(folders)), combiner="mean")
    boxed = analyse([uploads["hand_fracture.png"]], ["m32"], pool=MemberPool(dict(folders), annotations=coco_file),
                    combiner="mean")
    assert len(boxed.panels) == len(plain.panels) == 3  # original, the member's CAM, the fused CAM
    np.testing.assert_array_equal(boxed.panels[0][0], plain.panels[0][0])  # the original is left clean
    for (with_box, caption), (without, _) in zip(boxed.panels[1:], plain.panels[1:], strict=True):
        assert with_box.shape == (32, 32, 3), caption
        changed = (with_box != without).any(axis=2)
        outline = (with_box == BOX_COLOUR).all(axis=2)
        assert outline[ring()].all(), f"{caption}: the outline is not on the mapped box edges"
        np.testing.assert_array_equal(with_box[~ring()], without[~ring()], err_msg=f"{caption}: drawn elsewhere")
        assert not (changed & ~ring()).any()
    text = summary_markdown(boxed)
    assert "ground truth" in text and "annotations.coco.json" in text, text
    assert "hand_fracture.png: m32 " in text and "ensemble (fused) " in text, text
    assert str(coco_file.parent) not in text  # the file's name, never the server's path
    assert "ground truth" not in summary_markdown(plain)


def test_an_upload_without_annotations_renders_as_without_the_file(folders, uploads, coco_file):
    files = [uploads["hand_other.png"]]
    plain = analyse(files, ["m32"], pool=MemberPool(dict(folders)), combiner="mean")
    boxed = analyse(files, ["m32"], pool=MemberPool(dict(folders), annotations=coco_file), combiner="mean")
    assert len(boxed.panels) == len(plain.panels)
    for (a, ca), (b, cb) in zip(boxed.panels, plain.panels, strict=True):
        assert ca == cb
        np.testing.assert_array_equal(a, b)
    assert summary_markdown(boxed) == summary_markdown(plain)


def test_the_cli_reads_the_annotations_and_refuses_a_wrong_file(folders, tmp_path, monkeypatch):
    import demo.app
    from demo.cli import get_args_parser, main

    args = get_args_parser().parse_args(["--weights", str(tmp_path / "members"), "--annotations",
                                         str(tmp_path / "missing.coco.json")])
    monkeypatch.setattr(demo.app, "build_demo", lambda pool: pytest.fail("served with a missing annotations file"))
    with pytest.raises(SystemExit, match="missing.coco.json: no such file"):
        main(args)


LOCATED = {"method": "gradcam", "tolerance": 15.0, "level": 0.95, "images": 12, "pointing": 0.75,
           "pointing_lo": 0.468, "pointing_hi": 0.911, "pointing_chance": 0.104, "energy": 0.312, "energy_lo": 0.25,
           "energy_hi": 0.377, "energy_chance": 0.031, "file": "annotations.coco.json"}


def test_the_member_table_shows_each_members_validation_pointing_game_and_is_empty_without(tmp_path, uploads):
    """The columns come from each member's config.json (metrics.val_localisation, written by training); a member
    whose validation images had no boxes has empty cells."""
    from demo.app import ENERGY_COLUMN, POINTING_COLUMN

    torch.manual_seed(0)
    located = BoneClassifier("resnet10t", img_size=32, head_hidden=[8])
    located.metrics = {"val_auc": 0.8, "val_localisation": LOCATED}
    folders = {"located": located.save_member(tmp_path / "m" / "located"),
               "plain": BoneClassifier("resnet10t", img_size=32, head_hidden=[8]).save_member(tmp_path / "m" / "plain")}
    a = analyse([uploads["hand_other.png"]], ["located", "plain"], pool=MemberPool(folders), combiner="mean")
    table = a.members.set_index("member")
    assert table.loc["located", POINTING_COLUMN] == "0.750 (0.468–0.911; chance 0.104; 12 images)"
    assert table.loc["located", ENERGY_COLUMN] == "0.312 (0.250–0.377; chance 0.031)"
    assert table.loc["plain", POINTING_COLUMN] == "" and table.loc["plain", ENERGY_COLUMN] == ""
