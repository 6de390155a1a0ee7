"""The YOLO reader (:class:`zoo.localisation.YoloLabels`) on real-world folders: only finding classes, images with
the same stem in different folders, Roboflow's layout with its class list and README, an unreadable image. Tiny PNGs;
no model, no network."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from zoo.localisation import YoloLabels, boxes_by_image, load_annotations

LINE = "0 0.5 0.5 0.25 0.5\n"  # on a 64 x 32 (w x h) image: COCO [24, 8, 16, 16]


def _png(path: Path, w: int = 64, h: int = 32) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.zeros((h, w), np.uint8)).save(path)
    return str(path)


def _label(path: Path, text: str = LINE) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def test_a_folder_with_more_than_one_class_id_is_refused_saying_to_keep_only_the_findings(tmp_path):
    """GRAZPEDWRI-DX marks text (side markers) and metal beside fractures: every box would be a 'finding' and the box
    loss would pull CAMs onto the shortcuts."""
    _label(tmp_path / "yolo" / "labels" / "a.txt", "3 0.5 0.5 0.2 0.2\n")
    _label(tmp_path / "yolo" / "labels" / "b.txt", "3 0.5 0.5 0.2 0.2\n7 0.1 0.1 0.05 0.05\n")
    with pytest.raises(ValueError, match=r"2 class ids \(3 in .*a\.txt, 7 in .*b\.txt\).*keep only the finding"):
        load_annotations(tmp_path / "yolo", flag="--boxes")
    _label(tmp_path / "one" / "labels" / "a.txt", "3 0.5 0.5 0.2 0.2\n")  # one class, whatever its id: findings
    assert isinstance(load_annotations(tmp_path / "one", flag="--boxes"), YoloLabels)


def test_images_sharing_a_stem_in_different_folders_are_refused_with_one_flat_label_file(tmp_path):
    """MURA: every study has an image1.png; one labels/image1.txt cannot say which of them it marks."""
    _label(tmp_path / "yolo" / "labels" / "image1.txt")
    first = _png(tmp_path / "MURA" / "patient1" / "study1" / "image1.png")
    second = _png(tmp_path / "MURA" / "patient2" / "study1" / "image1.png")
    labels = load_annotations(tmp_path / "yolo", flag="--boxes")
    assert list(boxes_by_image(labels, [first])) == [first]  # one image of that stem: matched by stem alone
    with pytest.raises(ValueError, match="patient1/study1/image1.png and .*patient2/study1/image1.png both match"):
        boxes_by_image(labels, [first, second])


def test_label_files_at_the_images_relative_paths_give_each_image_its_own_boxes(tmp_path):
    _label(tmp_path / "yolo" / "labels" / "patient1" / "study1" / "image1.txt", "0 0.5 0.5 0.25 0.5\n")
    _label(tmp_path / "yolo" / "labels" / "patient2" / "study1" / "image1.txt", "0 0.25 0.25 0.125 0.25\n")
    first = _png(tmp_path / "MURA" / "patient1" / "study1" / "image1.png")
    second = _png(tmp_path / "MURA" / "patient2" / "study1" / "image1.png")
    got = boxes_by_image(load_annotations(tmp_path / "yolo", flag="--boxes"), [first, second])
    np.testing.assert_allclose(got[first][0], [[24, 8, 16, 16]])
    np.testing.assert_allclose(got[second][0], [[12, 4, 8, 8]])
    assert got[first][1:] == got[second][1:] == (32, 64)
    third = _png(tmp_path / "elsewhere" / "image1.png")  # neither label file's folders: two equally good ones
    with pytest.raises(ValueError, match="elsewhere/image1.png matches label files .* equally"):
        boxes_by_image(load_annotations(tmp_path / "yolo", flag="--boxes"), [third])


def test_roboflow_layout_with_class_list_readme_and_split_lists_reads_only_the_labels(tmp_path):
    """Roboflow exports train/labels/ and valid/labels/ beside data.yaml and a README.roboflow.txt; Ultralytics'
    folders may hold classes.txt and train.txt/val.txt/test.txt (image lists)."""
    root = tmp_path / "export"
    _label(root / "train" / "labels" / "a.txt")
    _label(root / "valid" / "labels" / "b.txt", "")
    _label(root / "README.roboflow.txt", "Exported from roboflow.com\n")
    _label(root / "README.dataset.txt", "# Fractures\n")
    _label(root / "train" / "labels" / "classes.txt", "fracture\n")
    for split in ("train", "val", "test"):
        _label(root / f"{split}.txt", f"./images/{split}/a.jpg\n")
    labels = load_annotations(root, flag="--boxes")
    assert [f.relative_to(root).as_posix() for f in labels.files] == ["train/labels/a.txt", "valid/labels/b.txt"]
    a = _png(tmp_path / "images" / "a.png")
    assert list(boxes_by_image(labels, [a, _png(tmp_path / "images" / "b.png")])) == [a]


def _broken_and_fine(tmp_path: Path) -> tuple[str, str]:
    """Two labelled images under tmp_path/imgs (labels in tmp_path/yolo): one not an image at all, one fine."""
    _label(tmp_path / "yolo" / "labels" / "broken.txt")
    _label(tmp_path / "yolo" / "labels" / "fine.txt")
    broken = tmp_path / "imgs" / "broken.png"
    broken.parent.mkdir()
    broken.write_bytes(b"not an image at all")
    return str(broken), _png(tmp_path / "imgs" / "fine.png")


def test_an_unreadable_labelled_image_gets_no_boxes_instead_of_raising(tmp_path):
    """predict --evaluate --annotations DIR: the image is already reported as unreadable; localisation goes on."""
    broken, fine = _broken_and_fine(tmp_path)
    got = boxes_by_image(load_annotations(tmp_path / "yolo", flag="--boxes"), [broken, fine])
    assert list(got) == [fine]


def test_localise_skips_an_unreadable_labelled_image_and_scores_the_rest(tmp_path):
    """predict --evaluate --annotations DIR runs the localisation after its CSV: one broken labelled image must not
    fail it (the predictions already report the image as unreadable)."""
    import pandas as pd
    import torch

    from zoo.ensemble import Ensemble
    from zoo.localisation import LocalisationOptions, localise
    from zoo.model import BoneClassifier

    broken, fine = _broken_and_fine(tmp_path)
    torch.manual_seed(0)
    member = BoneClassifier("resnet10t", img_size=32, head_hidden=[8]).save_member(tmp_path / "m32")
    ens = Ensemble.from_paths([str(member)])
    images = pd.DataFrame({"path": [broken, fine], "id": ["s1", "s2"], "label": [1, 1]})
    rows = localise(ens, images, load_annotations(tmp_path / "yolo", flag="--annotations"),
                    options=LocalisationOptions(methods=("gradcam",), road_samples=0, quiet=True))
    assert set(rows["path"]) == {fine} and len(rows) == 2  # the member and the fused map, on the readable image
