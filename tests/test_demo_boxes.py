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

CHROMIUM = Path("/usr/bin/chromium")

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


def test_example_annotations_reach_only_a_byte_identical_copy_of_the_example(folders, uploads, coco_file, tmp_path):
    """The demo's examples bring their own annotations: an upload gets their boxes only when it is the example image
    itself, not a user's image that merely shares its name."""
    root = tmp_path / "examples"
    (root / "test").mkdir(parents=True)
    (root / "test" / "hand_fracture.png").write_bytes(Path(uploads["hand_fracture.png"]).read_bytes())
    coco_file.rename(root / "annotations.coco.json")
    pool = MemberPool(dict(folders))
    pool.use_example_annotations(root)
    assert pool.annotations == root / "annotations.coco.json"
    same = analyse([uploads["hand_fracture.png"]], ["m32"], pool=pool, combiner="mean")
    assert "Green boxes: ground truth" in summary_markdown(same)
    other = Path(uploads["hand_other.png"]).with_name("elsewhere") / "hand_fracture.png"  # the name, other pixels
    other.parent.mkdir()
    other.write_bytes(Path(uploads["hand_other.png"]).read_bytes())
    plain = analyse([str(other)], ["m32"], pool=pool, combiner="mean")
    assert "ground truth" not in summary_markdown(plain)
    given = MemberPool(dict(folders), annotations=tmp_path / "mine.coco.json")
    given.use_example_annotations(root)  # a file the user gave wins over the examples'
    assert given.annotations == tmp_path / "mine.coco.json" and given.annotations_root is None


@pytest.mark.slow
@pytest.mark.browser
@pytest.mark.skipif(not CHROMIUM.exists(), reason="Debian's chromium not installed (.ci/run installs it)")
def test_real_browser_an_annotated_example_shows_green_boxes_and_the_pointing_column(tmp_path, monkeypatch):
    """The served demo with its examples (a small synthetic set with annotations.coco.json): the abnormal example is
    uploaded in Chromium, analysed, and the member's CAM panel comes back with the box outlined in green; the
    summary names the ground truth and the member table has the pointing-game column."""
    import urllib.request
    from io import BytesIO

    from conftest import free_port
    from playwright.sync_api import sync_playwright

    import demo.app
    from demo.app import ENERGY_COLUMN, POINTING_COLUMN, build_demo, example_files
    from zoo.data import SyntheticSpec, ensure_synthetic
    from zoo.localisation import boxes_by_image, load_annotations

    root = ensure_synthetic(tmp_path / "examples", SyntheticSpec(n_train=8, n_test=8))
    monkeypatch.setattr(demo.app, "EXAMPLES_DIR", root)
    coco = load_annotations(root / "annotations.coco.json")
    annotated = [p for [[p]] in example_files() if boxes_by_image(coco, [p])]
    assert annotated, "no example with boxes"
    torch.manual_seed(0)
    member = BoneClassifier("resnet10t", img_size=64, head_hidden=[8])
    member.metrics = {"val_auc": 0.8, "val_localisation": LOCATED}
    pool = MemberPool({"m64": member.save_member(tmp_path / "members" / "m64")})
    app = build_demo(pool, examples=True)
    assert pool.annotations == root / "annotations.coco.json"  # the examples' own file
    port = free_port()
    app.launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True)
    try:
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=str(CHROMIUM), args=[
                "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                "--disable-component-update"])
            page = browser.new_page(viewport={"width": 1400, "height": 1100})
            page.goto(f"http://127.0.0.1:{port}/")
            page.locator("#upload input[type=file]").set_input_files(annotated[0])
            page.wait_for_timeout(1500)
            page.locator("#analyse").click()
            page.wait_for_selector("#heatmaps img", timeout=60_000)
            page.wait_for_function("document.querySelector('#verdict').innerText.includes('P(abnormal)')",
                                   timeout=60_000)
            verdict = page.locator("#verdict").inner_text()
            table = page.locator("#table").inner_text()
            srcs = [page.locator("#heatmaps img").nth(i).get_attribute("src")
                    for i in range(page.locator("#heatmaps img").count())]
            browser.close()
        panels = [np.asarray(Image.open(BytesIO(urllib.request.urlopen(
            src if src.startswith("http") else f"http://127.0.0.1:{port}{src}", timeout=30).read())).convert("RGB"))
            for src in srcs]  # what the browser was served, while the app still serves it
    finally:
        app.close()
    assert "Green boxes: ground truth" in verdict and "annotations.coco.json" in verdict, verdict
    assert POINTING_COLUMN in table and ENERGY_COLUMN in table and "0.750" in table, table
    assert len(srcs) == 3, srcs  # original, the member's CAM, the fused CAM
    green = [int((panel == BOX_COLOUR).all(axis=2).sum()) for panel in panels]
    assert green[0] == 0 and green[1] >= 8 and green[2] >= 8, green  # outlined on the CAMs, not on the original


def _block_pycocotools(monkeypatch):
    """A plain install: pycocotools (the ``[eval]`` extra) is not importable."""
    import sys

    for name in [m for m in sys.modules if m == "pycocotools" or m.startswith("pycocotools.")] + ["pycocotools"]:
        monkeypatch.setitem(sys.modules, name, None)


def test_without_pycocotools_the_examples_show_no_boxes_and_every_analysis_still_runs(folders, uploads, coco_file,
                                                                                   tmp_path, monkeypatch):
    """The examples' annotations are optional: without pycocotools an upload of an example is analysed as without
    them, whether pycocotools is missing when the examples are set up or only when their file is first read."""
    root = tmp_path / "examples"
    (root / "test").mkdir(parents=True)
    (root / "test" / "hand_fracture.png").write_bytes(Path(uploads["hand_fracture.png"]).read_bytes())
    coco_file.rename(root / "annotations.coco.json")
    early = MemberPool(dict(folders))
    late = MemberPool(dict(folders))
    late.use_example_annotations(root)  # pycocotools there at start-up, gone when the file is read
    _block_pycocotools(monkeypatch)
    early.use_example_annotations(root)
    assert early.annotations is None
    plain = analyse([uploads["hand_fracture.png"]], ["m32"], pool=MemberPool(dict(folders)), combiner="mean")
    for pool in (early, late):
        a = analyse([uploads["hand_fracture.png"]], ["m32"], pool=pool, combiner="mean")
        assert pool.ground_truth([uploads["hand_fracture.png"]]) == {}
        assert summary_markdown(a) == summary_markdown(plain) and "ground truth" not in summary_markdown(a)
        assert len(a.panels) == len(plain.panels) == 3
    given = MemberPool(dict(folders), annotations=root / "annotations.coco.json")  # the user's own file: says why
    with pytest.raises(ImportError, match=r"bone-zoo\[eval\]"):
        given.ground_truth([uploads["hand_fracture.png"]])


def test_example_images_sharing_a_name_give_the_boxes_of_the_byte_identical_one(folders, uploads, tmp_path):
    root = tmp_path / "examples"
    for split, src in (("train", "hand_other.png"), ("test", "hand_fracture.png")):
        (root / split).mkdir(parents=True)
        (root / split / "x.png").write_bytes(Path(uploads[src]).read_bytes())
    (root / "annotations.coco.json").write_text(json.dumps({
        "images": [{"id": 1, "file_name": "train/x.png", "height": 32, "width": 64},
                   {"id": 2, "file_name": "test/x.png", "height": 32, "width": 64}],
        "annotations": [{"id": 1, "image_id": 1, "category_id": 1, "bbox": [0, 0, 4, 4], "area": 16, "iscrowd": 0},
                        {"id": 2, "image_id": 2, "category_id": 1, "bbox": BOX, "area": 256, "iscrowd": 0}],
        "categories": [{"id": 1, "name": "fracture"}]}))
    pool = MemberPool(dict(folders))
    pool.use_example_annotations(root)
    upload = Path(uploads["hand_fracture.png"]).with_name("x.png")  # a copy of test/x.png under its name
    upload.write_bytes(Path(uploads["hand_fracture.png"]).read_bytes())
    found = pool.ground_truth([str(upload)])
    assert list(found) == [str(upload)]
    np.testing.assert_array_equal(found[str(upload)][0], [BOX])
