"""--boxes (#24): masks aligned with the image through resize/pad and augmentation; the differentiable Grad-CAM is the
one the evaluation scores; the loss is the BCE where nothing is annotated; a boxes file that matches no image trains
exactly as without; a tiny member trained with boxes puts more CAM energy inside the planted lesion's box."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import free_port, run_script
from PIL import Image, ImageFilter

from zoo.boxes import (
    BOX_LOSS,
    SHARPNESS,
    BoxDataset,
    BoxLoss,
    box_dataset,
    box_masks,
    cam_map,
    gradcam,
    in_spread_units,
    peak_pixels,
    pointing_loss,
    shown,
    sign_loss,
)
from zoo.cam import cam_target, compute_cams
from zoo.data import load_images
from zoo.data.transforms import train_augment
from zoo.inference import ArrayDataset
from zoo.loss import WeightedBCE
from zoo.model import BoneClassifier
from zoo.registry import list_backbones

BOX = [30.0, 50.0, 24.0, 16.0]  # COCO x, y, w, h in the stored 120 x 90 (h x w) image


def _coco(path: Path, file_name: str, h: int, w: int, box=BOX) -> Path:
    path.write_text(json.dumps({
        "images": [{"id": 1, "file_name": file_name, "height": h, "width": w}],
        "annotations": [{"id": 1, "image_id": 1, "category_id": 1, "bbox": list(box), "area": box[2] * box[3],
                         "iscrowd": 0}], "categories": [{"id": 1, "name": "fracture"}]}))
    return path


@pytest.fixture
def boxed_image(tmp_path):
    """A non-square image (needs resize and pad) that is dark except for its box, drawn as bright pixels."""
    img = np.full((120, 90), 20, np.uint8)
    x, y, w, h = map(int, BOX)
    img[y:y + h, x:x + w] = 255
    p = tmp_path / "img1.png"
    Image.fromarray(img).save(p)
    return p, _coco(tmp_path / "boxes.coco.json", "train/img1.png", 120, 90)


def test_mask_stays_under_the_box_through_resize_pad_flip_rotation_crop(boxed_image):
    path, coco = boxed_image
    size = 64
    arr = load_images([str(path)], size, "", quiet=True)
    masks = box_masks(coco, [str(path)], size)
    assert set(masks) == {str(path)}  # matched on the base name (the file says train/img1.png)
    bright = np.asarray(arr.array[0]) > 128
    iou = (bright & masks[str(path)]).sum() / (bright | masks[str(path)]).sum()
    assert iou > 0.85, iou  # resize + pad move the box with its pixels
    aug = train_augment(rotation=30, hflip=True, translate=0.1, size=size, crop_scale=0.6, brightness=0.2,
                        contrast=0.2, gamma=0.2)
    ds = BoxDataset(ArrayDataset(arr, np.array([0]), np.array([1.0]), aug), {0: masks[str(path)]})
    for seed in range(12):
        torch.manual_seed(seed)
        x, _, _, m = ds[0]
        torch.manual_seed(seed)
        alone = aug(torch.from_numpy(np.array(arr.array[0]))[None])
        assert torch.equal(x, alone)  # the image draws exactly what it draws without a mask
        assert set(torch.unique(m).tolist()) <= {0, 1}  # geometry only: intensity jitter leaves the mask alone
        img, mk = x[0].numpy(), m[0].numpy().astype(bool)
        grown = np.asarray(Image.fromarray(mk.astype(np.uint8) * 255).filter(ImageFilter.MaxFilter(5))) > 0
        lit = img > img.max() * 0.8 if img.max() > 60 else np.zeros_like(mk)
        assert not (lit & ~grown).any(), f"seed {seed}: box pixels outside the mask"
        if mk.sum() > 20:
            assert (lit & mk).sum() >= 0.6 * mk.sum(), f"seed {seed}: the mask is not on the box"


@pytest.mark.parametrize("name", ["resnet10t", "vit_small_patch16_224"])
def test_differentiable_gradcam_is_the_evaluated_gradcam(name):
    """What the loss trains is what localisation scores: pytorch-grad-cam's GradCAM of the logit."""
    torch.manual_seed(0)
    model = BoneClassifier(name, img_size=64, head_hidden=[16]).eval()
    images = np.random.default_rng(0).integers(0, 255, (3, 64, 64), dtype=np.uint8)
    expected, _ = compute_cams(model, images, "gradcam")
    layer, reshape = cam_target(model)
    held = {}
    hook = layer.register_forward_hook(lambda m, i, o: held.update(a=o))
    x = ((torch.from_numpy(images)[:, None].float() / 255 - model.mean) / model.std)
    logits = model(x)
    cam = gradcam(held["a"], logits, 64, reshape).detach().numpy()
    hook.remove()
    for c, e in zip(cam, expected, strict=True):
        if e.max() > 0:
            assert np.corrcoef(c.ravel(), e.ravel())[0, 1] > 0.98
            assert np.abs(c - e).max() < 0.08


def test_pointing_loss_is_a_soft_pointing_game_on_the_cam_grid():
    """Low where the map peaks in a target cell, high where it peaks elsewhere, 0 when every cell is a target; an
    offset of the map (the logit's) does not change it, its scale multiplies it and gets no gradient; its gradient
    stays bounded however small the map (a standardised map's grew as 1 / spread)."""
    mask = torch.zeros(1, 96, 96)
    mask[0, 40:50, 70:82] = 1  # holds the peak pixels (47 or 48, 80) of cell (1, 2) of a 3 x 3 grid over 96 px
    inside, outside = torch.zeros(1, 3, 3), torch.zeros(1, 3, 3)
    inside[0, 1, 2], outside[0, 2, 0] = 5.0, 5.0
    spread = float(inside.std(correction=0))
    hit, miss = pointing_loss(inside, mask).item(), pointing_loss(outside, mask).item()
    assert hit < 0.05 * spread and miss > np.log(9) * spread  # the pointing game's hit and miss, made soft
    noisy = inside + 0.3 * torch.randn(1, 3, 3, generator=torch.Generator().manual_seed(0))
    assert pointing_loss(7.0 * noisy - 3.0, mask).item() == pytest.approx(7.0 * pointing_loss(noisy, mask).item(),
                                                                         rel=1e-4)
    assert pointing_loss(outside, torch.full((1, 96, 96), 0.4)).item() == pytest.approx(0.0, abs=1e-6)  # all cells
    assert pointing_loss(outside, 1e-3 * mask).item() == pytest.approx(1e-3 * miss)  # mixup: the annotated share
    for scale in (1.0, 1e-4):  # a map of any size, as small as an untrained member's
        cam = (scale * torch.arange(9.0).reshape(1, 3, 3)).requires_grad_()
        pointing_loss(cam, mask).backward()
        g = cam.grad.flatten()
        assert g[5] < 0  # up in the box's cell
        assert g.abs().max() <= 3 * SHARPNESS
        along = float((g * cam.detach().flatten()).sum()) / float(g.norm() * cam.detach().norm())
        assert abs(along) < 1e-2  # no pull along the map's scale: only where it peaks moves
    cam = torch.zeros(1, 3, 3, requires_grad=True)  # a flat map: no loss, no gradient to blow up
    flat = pointing_loss(cam, mask)
    flat.backward()
    assert flat.item() == pytest.approx(0.0, abs=1e-5) and torch.isfinite(cam.grad).all()
    assert cam.grad.abs().max() <= 3 * SHARPNESS
    one = torch.full((1, 1, 1), 0.7, requires_grad=True)  # a 1 x 1 grid (a 32-px input at stride 32): nothing to move
    single = pointing_loss(one, mask)
    single.backward()
    assert single.item() == 0.0 and torch.isfinite(one.grad).all()


def test_sign_loss_wants_the_shown_map_on_the_box_and_zero_elsewhere():
    """pytorch-grad-cam shows a map's positive part: the sign term is 0 for a map that is > 0 only at the box's cell
    (by at least its spread), positive for the same map lifted so that its uneven background is > 0 (the pointing
    game cannot tell the two apart; the shown map, min-max normalised, keeps that background's unevenness, and the
    energy share inside the box drops) and for a map <= 0 everywhere (the ReLU flattens it: a miss); scale multiplies
    it, its gradient is at most 1 a cell, pushes the background down and the box's cell up; an empty mask gives 0,
    not NaN."""
    mask = torch.zeros(1, 96, 96)
    mask[0, 40:50, 70:82] = 1  # cell (1, 2) of a 3 x 3 grid over 96 px (see the pointing test)
    clean = -torch.linspace(0.5, 2.0, 9).reshape(1, 3, 3)  # an uneven background, all < 0
    clean[0, 1, 2] = 5.0
    lifted = clean + 3.0  # the same map, its background now 1 to 2.5
    assert sign_loss(clean, mask).item() == pytest.approx(0.0, abs=1e-6)
    assert pointing_loss(lifted, mask).item() == pytest.approx(pointing_loss(clean, mask).item(), rel=1e-5)
    assert sign_loss(lifted, mask).item() > 0.5
    energy = lambda cam: float((shown(cam, 96) * mask).sum() / shown(cam, 96).sum())  # noqa: E731
    assert energy(clean) > 1.5 * energy(lifted)  # what the sign term buys: the share inside the box (0.091 vs 0.050)
    assert sign_loss(clean - 6.0, mask).item() > 0.5  # <= 0 everywhere: shown as flat
    assert sign_loss(4.0 * lifted, mask).item() == pytest.approx(4.0 * sign_loss(lifted, mask).item(), rel=1e-5)
    for cam in (lifted.clone(), (clean - 6.0).clone(), 1e-4 * lifted.clone()):
        cam.requires_grad_()
        sign_loss(cam, mask).backward()
        g = cam.grad.flatten()
        assert torch.isfinite(g).all() and g.abs().max() <= 1.0 + 1e-6
        assert g[5] <= 0 and (g[torch.arange(9) != 5] >= 0).all() and g.abs().sum() > 0
    empty = torch.randn(2, 3, 3, requires_grad=True)
    loss = sign_loss(empty, torch.zeros(2, 96, 96))
    loss.sum().backward()
    assert (loss == 0).all() and torch.isfinite(empty.grad).all()


@pytest.mark.parametrize(("cells", "size"), [(3, 96), (4, 128), (12, 384), (5, 150), (7, 64)])
def test_peak_pixels_are_where_pytorch_grad_cams_resized_map_peaks(cells, size):
    """For each cell as the grid's maximum, with neighbours of any order, the first maximum of the map as
    pytorch-grad-cam resizes it (OpenCV, half-pixel centres) is one of the cell's two candidate pixels a side."""
    from pytorch_grad_cam.utils.image import scale_cam_image

    first, second = (t.numpy() for t in peak_pixels(cells, size))
    rng = np.random.default_rng(cells)
    for _ in range(4):
        for i in range(cells):
            for j in range(cells):
                grid = rng.uniform(0, 1, (cells, cells)).astype(np.float32)
                grid[i, j] = 2.0
                up = scale_cam_image(grid[None], (size, size))[0]
                r, c = np.unravel_index(np.argmax(up), up.shape)
                assert r in (first[i], second[i]) and c in (first[j], second[j]), (i, j, r, c)


def test_pointing_loss_of_an_empty_mask_is_zero_not_nan():
    cam = torch.randn(2, 3, 3, requires_grad=True)
    mask = torch.zeros(2, 96, 96)
    mask[1, 40:50, 40:50] = 1
    loss = pointing_loss(cam, mask)
    loss.sum().backward()
    assert loss[0].item() == 0.0 and torch.isfinite(loss).all() and torch.isfinite(cam.grad).all()


def test_box_loss_maps_each_image_alone_as_the_evaluated_gradcam_does():
    """The map the loss trains is each image's own eval-mode Grad-CAM, in a training step too: the head's train-mode
    BatchNorm (batch statistics) and dropout do not mix the other images of the batch into its weights."""
    torch.manual_seed(0)
    model = BoneClassifier("resnet10t", img_size=64, head_hidden=[16]).train()
    for m in model.backbone.modules():  # the backbone's own activations per image, so only the head could mix them
        if isinstance(m, torch.nn.BatchNorm2d):
            m.eval()
    for m in model.head.modules():  # the head's running statistics held still, so every map below sees the same
        if isinstance(m, torch.nn.BatchNorm1d):
            m.momentum = 0.0
    seen = []

    class Capture(BoxLoss):
        def term(self, cam, mask):
            seen.append(cam.detach())
            return super().term(cam, mask)

    loss_fn = Capture(WeightedBCE(1.0), model, weight=1.0)
    x = torch.randn(6, 1, 64, 64)
    mask = torch.zeros(6, 1, 64, 64)
    mask[:, :, :20, :20] = 1
    for others in (x[1:], torch.randn(5, 1, 64, 64)):  # the same first image among other companions
        loss_fn(model(torch.cat([x[:1], others])), torch.ones(6), mask)
    layer, reshape = cam_target(model)
    held = {}
    hook = layer.register_forward_hook(lambda m, i, o: held.update(a=o))
    model.eval()
    logit = model(x[:1])  # the image alone, eval mode: what localisation scores
    alone = cam_map(held["a"], logit, reshape)
    hook.remove()
    loss_fn.remove()
    torch.testing.assert_close(seen[0][0], seen[1][0], rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(seen[0][0], alone[0].detach(), rtol=1e-4, atol=1e-5)


def test_pointing_loss_targets_the_cells_the_evaluated_pointing_game_counts():
    """A cell is a target where the evaluated CAM's maximum would land in the hit region when that cell peaks (its
    peak pixel), not merely where the region touches it; a region that holds no cell's peak pixel falls back to the
    cells it touches."""
    from zoo.localisation import pad_geometry, pointing_hit

    region = torch.zeros(1, 96, 96)
    region[0, 20:50, 20:50] = 1  # touches cells (0, 0), (0, 1), (1, 0), (1, 1); holds only (1, 1)'s peak pixel (47, 47)
    corner, centre = torch.zeros(1, 3, 3), torch.zeros(1, 3, 3)
    corner[0, 0, 0], centre[0, 1, 1] = 5.0, 5.0
    assert pointing_loss(centre, region).item() < 0.05 < 1.0 < pointing_loss(corner, region).item()
    geo = pad_geometry(96, 96, 96)  # the same verdicts from the evaluated pointing game, box = the region
    box = np.array([[20.0, 20.0, 29.0, 29.0]])
    for cam, hit in ((centre, True), (corner, False)):
        up = torch.nn.functional.interpolate(cam[None], size=(96, 96), mode="bilinear", align_corners=False)[0, 0]
        assert pointing_hit(up.numpy(), box, geo, tolerance=0) is hit
    small = torch.zeros(1, 96, 96)
    small[0, 30:34, 30:34] = 1  # no peak pixel inside: the four cells it touches
    assert pointing_loss(corner, small).item() < 0.05 < 1.0 < pointing_loss(torch.flip(corner, (1, 2)), small).item()


def test_box_loss_is_the_bce_where_no_positive_is_annotated_and_adds_a_gradient_where_one_is():
    torch.manual_seed(0)
    model = BoneClassifier("resnet10t", img_size=64, head_hidden=[16]).train()
    base = WeightedBCE(2.0)
    loss_fn = BoxLoss(base, model, weight=1.0)
    x = torch.randn(4, 1, 64, 64)
    y = torch.tensor([1.0, 0.0, 1.0, 0.0])
    mask = torch.zeros(4, 1, 64, 64, dtype=torch.uint8)
    assert torch.equal(loss_fn(logits := model(x), y, mask), base(logits, y))  # no annotation
    mask[1, :, 10:30, 10:30] = 1  # an annotated negative: not supervised
    assert torch.equal(loss_fn(logits := model(x), y, mask), base(logits, y))
    mask[0, :, 10:30, 10:30] = 1
    logits = model(x)
    loss = loss_fn(logits, y, mask)
    assert loss > base(logits, y)
    loss.backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)
    loss_fn.set_epoch(1)  # nothing changes at warm-up 0
    assert loss_fn.ramp == 1.0
    ramped = BoxLoss(base, model, weight=1.0, warmup=2)
    ramped.set_epoch(1)
    assert ramped.ramp == 0.0
    assert torch.equal(ramped(logits := model(x), y, mask), base(logits, y))  # epoch 1 of a warm-up: BCE only
    assert ramped.epoch_stats()["train_box_term"] is None  # it acted on no image
    ramped.set_epoch(2)
    assert ramped.ramp == 0.5
    with torch.autocast("cpu", dtype=torch.bfloat16):  # mixed precision: the map is computed in fp32
        logits = model(x)
    loss = loss_fn(logits, y, mask)
    assert torch.isfinite(loss) and loss.dtype == torch.float32
    model.eval()
    with torch.no_grad():
        model(x)  # validation: nothing held
    assert torch.equal(loss_fn(logits, y, mask), base(logits, y))
    loss_fn.remove()
    ramped.remove()


def test_the_logged_box_term_is_the_unweighted_mean_per_annotated_image_whatever_the_maps_scale():
    """metrics.jsonl's train_box_term: over an epoch's batches, the mean box term per annotated positive, without the
    weight or the warm-up ramp, in units of each map's spread (the term itself scales with the map); train_bce the
    mean BCE per image; a new epoch starts from nothing."""
    torch.manual_seed(0)
    model = BoneClassifier("resnet10t", img_size=64, head_hidden=[16]).train()
    seen = []

    class Capture(BoxLoss):
        def term(self, cam, mask):
            seen.append((cam.detach(), mask))
            return super().term(cam, mask)

    base = WeightedBCE(2.0)
    loss_fn = Capture(base, model, weight=3.0, warmup=2)
    loss_fn.set_epoch(2)
    assert loss_fn.ramp == 0.5
    bce, images = [], []
    # 1, then 2 annotated positives (and an annotated negative, not counted), then a smaller batch with none: its BCE
    # counts, its images weigh as many as they are
    for annotated, n in (([0], 4), ([2, 3], 4), ([], 2)):
        x, mask, y = torch.randn(n, 1, 64, 64), torch.zeros(n, 1, 64, 64), torch.tensor([1.0, 0.0, 1.0, 1.0])[:n]
        for i in [*annotated, 1]:
            mask[i, :, 6 * i:6 * i + 20, 10:34] = 1
        logits = model(x)
        bce.append(base(logits, y).item())
        images.append(n)
        loss_fn(logits, y, mask)
    per_image = torch.cat([(pointing_loss(c, m) + sign_loss(c, m)) / (c.flatten(1).std(1, correction=0) + 1e-6)
                           for c, m in seen])
    assert len(per_image) == 3 and (per_image > 0).all()
    stats = loss_fn.epoch_stats()
    assert stats["train_box_term"] == pytest.approx(per_image.mean().item(), rel=1e-5)
    assert stats["train_bce"] == pytest.approx(np.average(bce, weights=images), rel=1e-5)
    cam, mask = seen[1]
    for scale in (0.01, 10.0):  # the map's scale moves the term in proportion, the logged value not (but for 1e-6s)
        torch.testing.assert_close(loss_fn.term(scale * cam, mask), scale * loss_fn.term(cam, mask), rtol=1e-2,
                                   atol=0)
        fresh = BoxLoss(base, model, weight=3.0)  # the second batch's maps, scaled: the same logged value
        fresh._add(torch.tensor(1.0), 1, in_spread_units(fresh.term(scale * cam, mask), scale * cam))
        assert fresh.epoch_stats()["train_box_term"] == pytest.approx(per_image[1:].mean().item(), rel=1e-2)
        fresh.remove()
    loss_fn.set_epoch(3)
    assert loss_fn.epoch_stats() == {"train_bce": None, "train_box_term": None}
    loss_fn.remove()


@pytest.mark.parametrize("name", list_backbones())
def test_every_backbone_gets_a_box_gradient_through_its_cam_layer(name):
    torch.manual_seed(0)
    model = BoneClassifier(name, img_size=64, head_hidden=[16]).train()
    loss_fn = BoxLoss(lambda logits, y: 0 * logits.sum(), model, weight=1.0)  # the box term alone
    mask = torch.zeros(2, 1, 64, 64)
    mask[:, :, :16, :16] = 1  # one cell of the CAM grid (2 x 2 at stride 32, 4 x 4 for a ViT's 16-px patches)
    loss = loss_fn(model(torch.randn(2, 1, 64, 64)), torch.ones(2), mask)
    assert torch.isfinite(loss) and loss.item() > 0
    loss.backward()
    loss_fn.remove()
    grads = [p.grad for p in model.backbone.parameters() if p.grad is not None]
    assert grads and all(torch.isfinite(g).all() for g in grads)
    assert sum(float(g.abs().sum()) for g in grads) > 0  # the map's share pulls on the backbone


def test_box_dataset_keeps_only_the_training_images_it_annotates(boxed_image, tmp_path):
    path, coco = boxed_image
    arr = load_images([str(path)], 48, "", quiet=True)
    ds, record = box_dataset(ArrayDataset(arr, np.array([0]), np.array([1.0])), [str(path)], coco)
    assert isinstance(ds, BoxDataset) and record["annotated_train_positives"] == 1
    assert record["file"] == "boxes.coco.json" and len(record["sha256"]) == 64
    ds, record = box_dataset(ArrayDataset(arr, np.array([0]), np.array([0.0])), [str(path)], coco)
    assert ds is None and record["annotated_train_images"] == 1  # a negative only: trains as without
    other = _coco(tmp_path / "other.coco.json", "train/nothing.png", 10, 10)
    ds, record = box_dataset(ArrayDataset(arr, np.array([0]), np.array([1.0])), [str(path)], other)
    assert ds is None and record["annotated_train_images"] == 0


TRAIN = ["--models", "resnet10t", "--img-size", "48", "--epochs", "1", "--lr", "1e-3", "--head-hidden", "32",
         "--recipe", "seed", "--calibration-fraction", "0", "--cache-dir", ""]


@pytest.mark.slow
def test_a_boxes_file_that_matches_no_image_says_so_and_trains_exactly_as_without(tmp_path, synthetic_root):
    from safetensors.torch import load_file

    other = _coco(tmp_path / "elsewhere.coco.json", "train/not_in_this_set.png", 100, 100)
    plain = run_script("train_all.py", "--data", synthetic_root, *TRAIN, "--out", tmp_path / "plain", cwd=tmp_path)
    boxed = run_script("train_all.py", "--data", synthetic_root, *TRAIN, "--boxes", other, "--out", tmp_path / "boxed",
                       cwd=tmp_path)
    assert plain.returncode == 0 and boxed.returncode == 0, boxed.stderr[-2000:]
    assert "no positive training image has a box" in boxed.stdout + boxed.stderr
    a = load_file(tmp_path / "plain" / "resnet10t" / "model.safetensors")
    b = load_file(tmp_path / "boxed" / "resnet10t" / "model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    record = json.loads((tmp_path / "boxed" / "resnet10t" / "config.json").read_text())["training"]["boxes"]
    assert record["file"] == "elsewhere.coco.json" and record["annotated_train_images"] == 0
    assert json.loads((tmp_path / "plain" / "resnet10t" / "config.json").read_text())["training"]["boxes"] is None
    bad = run_script("train_all.py", "--data", synthetic_root, *TRAIN, "--boxes", tmp_path / "missing.json",
                     "--out", tmp_path / "bad", cwd=tmp_path)
    assert bad.returncode == 2 and "--boxes" in bad.stderr and "no such file" in bad.stderr
    assert not (tmp_path / "bad").exists()  # refused before anything was written
    compiled = run_script("train_all.py", "--data", synthetic_root, *TRAIN, "--boxes", other, "--compile",
                          "--out", tmp_path / "compiled", cwd=tmp_path)
    assert compiled.returncode == 2 and "drop --compile" in compiled.stderr  # no double backward when compiled
    assert not (tmp_path / "compiled").exists()


ENERGY_MARGIN = 0.02  # energy share inside the box, with minus without (chance, the boxes' share, is about 0.03)
POINTING_MARGIN = 0.15  # pointing game, with minus without (measured: 0.048 -> 0.371 with the soft pointing loss)


@pytest.mark.slow
def test_a_member_trained_with_boxes_puts_more_cam_energy_in_the_lesion_box(tmp_path_factory):
    from zoo.data import SyntheticSpec, ensure_synthetic, load_dataset
    from zoo.localisation import boxes_by_image, energy_share, load_annotations, pad_geometry, pointing_hit
    from zoo.train import TrainConfig, Trainer

    root = ensure_synthetic(tmp_path_factory.mktemp("boxes") / "synthetic", SyntheticSpec(n_train=160, n_test=60))
    ds = load_dataset(root)
    coco_path = root / "annotations.coco.json"
    pos = ds.test[ds.test["label"] == 1]
    boxes = boxes_by_image(load_annotations(coco_path), pos["path"].tolist(), root)
    paths = sorted(boxes)
    size = 96
    images = load_images(paths, size, "", quiet=True).array[:]
    energy, pointing = {}, {}
    geos = [pad_geometry(boxes[p][1], boxes[p][2], size) for p in paths]
    for with_boxes in (False, True):
        cfg = TrainConfig(backbone="regnetx_002", epochs=5, img_size=size, lr=1e-3, batch_size=16, head_hidden=[64],
                          calibration_fraction=0, mixed_precision="no", cache_dir="", quiet=True,
                          boxes=str(coco_path) if with_boxes else None, box_weight=1.0, box_warmup=0.0)
        out = tmp_path_factory.mktemp("member")
        Trainer(cfg, ds, out).fit()
        model = BoneClassifier.load(out)
        record = model.training_config["boxes"]
        if with_boxes:  # recorded in config.json and the card
            assert record["file"] == "annotations.coco.json" and record["annotated_train_positives"] > 20
            assert record["weight"] == 1.0
            assert "Box supervision: `annotations.coco.json`" in (card := (out / "README.md").read_text())
            assert record["supervised"] > 0 and f"applied to {record['supervised']} annotated positives" in card
        else:
            assert record is None
        cams, _ = compute_cams(model, images, "gradcam")
        energy[with_boxes] = np.nanmean([energy_share(c, boxes[p][0], g) for c, p, g in zip(cams, paths, geos,
                                                                                             strict=True)])
        pointing[with_boxes] = np.mean([pointing_hit(c, boxes[p][0], g) for c, p, g in zip(cams, paths, geos,
                                                                                           strict=True)])
    assert energy[True] >= energy[False] + ENERGY_MARGIN, energy
    assert pointing[True] >= pointing[False] + POINTING_MARGIN, pointing


@pytest.mark.slow
def test_boxes_train_under_ddp_and_bf16(tmp_path, synthetic_root):
    """Two CPU processes (gloo), bf16 autocast: the box loss's second-order backward goes through DDP's reducer."""
    import os
    import subprocess
    import sys

    from conftest import ROOT

    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(free_port()),
           str(ROOT / "train_all.py"), "--data", str(synthetic_root), *TRAIN, "--quiet", "--device", "cpu",
           "--mixed-precision", "bf16", "--grad-accum", "2", "--boxes", str(synthetic_root / "annotations.coco.json"),
           "--out", str(tmp_path / "w")]
    proc = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=600,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    cfg = json.loads((tmp_path / "w" / "resnet10t" / "config.json").read_text())["training"]
    assert cfg["processes"] == 2 and cfg["mixed_precision"] == "bf16"
    assert cfg["boxes"]["annotated_train_positives"] > 20 and cfg["boxes"]["weight"] == cfg["box_weight"]
    assert cfg["boxes"]["supervised"] > 0  # the box term was in the loss, not silently skipped under DDP
    assert cfg["grad_accum"] == 2
    assert proc.stdout.count("positive training images with boxes") == 1  # said once, by the main process


def test_a_trainer_refuses_boxes_on_a_compiled_model(tmp_path, synthetic_root):
    """The library path too, not only train_all.py: a compiled graph has no double backward."""
    from zoo.data import load_dataset
    from zoo.train import TrainConfig, Trainer

    cfg = TrainConfig(backbone="resnet10t", epochs=1, img_size=32, head_hidden=[8], compile=True, quiet=True,
                      export=False, cache_dir="", boxes=str(synthetic_root / "annotations.coco.json"))
    with pytest.raises(ValueError, match="drop --compile"):
        Trainer(cfg, load_dataset(synthetic_root), tmp_path / "m").fit()


def test_resume_sees_the_boxes_files_content_and_the_box_settings(tmp_path):
    """The config holds only the --boxes path: the same path with other boxes in it (or another weight or warm-up)
    is another training, and a member fingerprinted before boxes were hashed cannot be continued with --boxes."""
    from zoo.checkpoint import FINGERPRINT_FILE, Checkpoint, fingerprint, resume_changes
    from zoo.config import TrainConfig

    boxes = _coco(tmp_path / "boxes.coco.json", "train/img1.png", 120, 90)
    data = {"sha256": "x", "images": 3, "pseudo_labelled": 0, "root": "/d"}
    cfg = TrainConfig(epochs=3, boxes=str(boxes), box_weight=1.0, box_warmup=1.0)
    fp = fingerprint(cfg, data)
    model = torch.nn.Linear(2, 1)
    opt = torch.optim.Adam(model.parameters())
    sched = torch.optim.lr_scheduler.StepLR(opt, 1)
    Checkpoint(tmp_path / "m" / "checkpoint", fingerprint=fp).save({"epoch": 1}, model, opt, sched, best=True)
    assert resume_changes(tmp_path / "m", fingerprint(cfg, data)) == []
    _coco(boxes, "train/img1.png", 120, 90, box=[0.0, 0.0, 10.0, 10.0])  # the same file, other boxes
    changed = resume_changes(tmp_path / "m", fingerprint(cfg, data))
    assert len(changed) == 1 and changed[0].startswith("the boxes file (boxes.coco.json") and "differs" in changed[0]
    _coco(boxes, "train/img1.png", 120, 90)  # back as it was: nothing to refuse
    assert resume_changes(tmp_path / "m", fingerprint(cfg, data)) == []
    from dataclasses import replace

    assert resume_changes(tmp_path / "m", fingerprint(replace(cfg, box_weight=0.5), data)) == [
        "box_weight 1.0 -> 0.5"]
    assert resume_changes(tmp_path / "m", fingerprint(replace(cfg, box_warmup=0.0), data)) == [
        "box_warmup 1.0 -> 0.0"]
    assert resume_changes(tmp_path / "m", fingerprint(replace(cfg, boxes=None), data)) == [
        f"boxes {str(boxes)!r} -> None"]
    # a checkpoint of the loss before (its boxes record names no loss): the same file, weight and warm-up, but
    # another training, refused by name rather than continued under the other loss
    before = {**fp, "boxes": {k: v for k, v in fp["boxes"].items() if k not in ("loss", "sharpness")}}
    Checkpoint(tmp_path / "e" / "checkpoint", fingerprint=before).save({"epoch": 1}, model, opt, sched, best=True)
    assert resume_changes(tmp_path / "e", fingerprint(cfg, data)) == [
        f"the box loss (grad-cam energy share -> {BOX_LOSS}, sharpness 2): another training"]
    # the soft pointing game before its map was each image's own (the train-mode head's): another training too
    first = {**fp, "boxes": {**fp["boxes"], "loss": "grad-cam soft pointing game"}}
    Checkpoint(tmp_path / "v1" / "checkpoint", fingerprint=first).save({"epoch": 1}, model, opt, sched, best=True)
    assert resume_changes(tmp_path / "v1", fingerprint(cfg, data)) == [
        f"the box loss (grad-cam soft pointing game, sharpness 2 -> {BOX_LOSS}, sharpness 2): another training"]
    # the soft pointing game before the sign term: another training too
    second = {**fp, "boxes": {**fp["boxes"], "loss": "grad-cam soft pointing game v2"}}
    Checkpoint(tmp_path / "v2" / "checkpoint", fingerprint=second).save({"epoch": 1}, model, opt, sched, best=True)
    assert resume_changes(tmp_path / "v2", fingerprint(cfg, data)) == [
        f"the box loss (grad-cam soft pointing game v2, sharpness 2 -> {BOX_LOSS}, sharpness 2): another training"]
    # a finished member whose fingerprint.json predates the boxes hash: --boxes cannot be continued on it
    old = tmp_path / "old"
    old.mkdir()
    (old / "metrics.json").write_text("{}")
    (old / FINGERPRINT_FILE).write_text(json.dumps({k: v for k, v in fp.items() if k != "boxes"}))
    assert resume_changes(old, fingerprint(replace(cfg, boxes=None), data)) == [f"boxes {str(boxes)!r} -> None"]
    changed = resume_changes(old, fingerprint(cfg, data))
    assert len(changed) == 1 and "does not record which boxes" in changed[0]


def test_resume_of_a_member_from_before_fingerprints_sees_boxes_turned_on_or_off_and_an_unreadable_file(tmp_path):
    """A member with only config.json (an older bone-zoo): its "boxes" is what --boxes matched, not the path, so the
    config comparison cannot see boxes given or dropped; and a boxes file that cannot be read is said to be so."""
    from dataclasses import replace

    from zoo.checkpoint import Checkpoint, fingerprint, resume_changes
    from zoo.config import TrainConfig

    boxes = _coco(tmp_path / "boxes.coco.json", "train/img1.png", 120, 90)
    data = {"sha256": "x", "images": 3, "pseudo_labelled": 0, "root": "/d"}
    cfg = TrainConfig(epochs=3, boxes=str(boxes), box_weight=1.0, box_warmup=1.0)
    plain = replace(cfg, boxes=None)
    for name, record in (("without", None), ("with", {**fingerprint(cfg, data)["boxes"], "matched": 1})):
        (tmp_path / name).mkdir()
        (tmp_path / name / "metrics.json").write_text("{}")
        (tmp_path / name / "config.json").write_text(json.dumps({"training": {"epochs": 3, "boxes": record}}))
    assert resume_changes(tmp_path / "without", fingerprint(plain, data)) == []
    assert resume_changes(tmp_path / "without", fingerprint(cfg, data)) == [
        "boxes: trained without --boxes, now --boxes boxes.coco.json"]
    assert resume_changes(tmp_path / "with", fingerprint(cfg, data)) == []
    assert resume_changes(tmp_path / "with", fingerprint(plain, data)) == [
        "boxes: trained with --boxes boxes.coco.json, now without"]
    model = torch.nn.Linear(2, 1)
    opt = torch.optim.Adam(model.parameters())
    Checkpoint(tmp_path / "m" / "checkpoint", fingerprint=fingerprint(cfg, data)).save(
        {"epoch": 1}, model, opt, torch.optim.lr_scheduler.StepLR(opt, 1), best=True)
    boxes.unlink()  # the same path, nothing to read there now
    changed = resume_changes(tmp_path / "m", fingerprint(cfg, data))
    assert len(changed) == 1 and "boxes.coco.json: unreadable now" in changed[0] and "differs" not in changed[0]
    changed = resume_changes(tmp_path / "with", fingerprint(cfg, data))
    assert len(changed) == 1 and "unreadable now" in changed[0]


@pytest.mark.slow
def test_train_all_resume_refuses_a_boxes_file_whose_content_changed(tmp_path, synthetic_root):
    boxes = tmp_path / "boxes.coco.json"
    boxes.write_bytes((synthetic_root / "annotations.coco.json").read_bytes())
    args = ["--data", synthetic_root, *TRAIN, "--quiet", "--no-export", "--boxes", boxes, "--out", tmp_path / "w"]
    first = run_script("train_all.py", *args, cwd=tmp_path)
    assert first.returncode == 0, first.stderr[-2000:]
    weights = (tmp_path / "w" / "resnet10t" / "model.safetensors").read_bytes()
    same = run_script("train_all.py", *args, "--resume", cwd=tmp_path)
    assert same.returncode == 0 and "already trained, skipped" in same.stdout, same.stderr[-2000:]
    coco = json.loads(boxes.read_text())
    for a in coco["annotations"]:  # the same file name, every box moved
        a["bbox"] = [0.0, 0.0, 8.0, 8.0]
    boxes.write_text(json.dumps(coco))
    moved = run_script("train_all.py", *args, "--resume", cwd=tmp_path)
    assert moved.returncode == 2, moved.stdout[-2000:]
    assert "--resume refused" in moved.stderr and "the boxes file (boxes.coco.json" in moved.stderr
    assert (tmp_path / "w" / "resnet10t" / "model.safetensors").read_bytes() == weights  # nothing was touched


def _val_hits(out: Path, trainer, coco_path: Path, root: Path) -> tuple[list[str], int, float]:
    """The abnormal validation images with boxes, how many of the saved member's Grad-CAMs hit them and their mean
    energy share (NaN when no map has mass), recomputed from the member folder (what the demo loads)."""
    from zoo.localisation import boxes_by_image, energy_share, load_annotations, pad_geometry, pointing_hit

    val = trainer.val_df[trainer.val_df["label"] == 1]
    boxes = boxes_by_image(load_annotations(coco_path), val["path"].tolist(), root)
    paths = [p for p in val["path"] if p in boxes]
    model = BoneClassifier.load(out)
    cams, _ = compute_cams(model, load_images(paths, model.img_size, "", quiet=True).array[:], "gradcam")
    geos = [pad_geometry(boxes[p][1], boxes[p][2], c.shape[0]) for c, p in zip(cams, paths, strict=True)]
    hits = sum(pointing_hit(c, boxes[p][0], g) for c, p, g in zip(cams, paths, geos, strict=True))
    energy = np.array([energy_share(c, boxes[p][0], g) for c, p, g in zip(cams, paths, geos, strict=True)])
    return paths, hits, float(np.nanmean(energy)) if np.isfinite(energy).any() else float("nan")


@pytest.mark.slow
@pytest.mark.parametrize("given", ["--boxes", "the data folder's annotations.coco.json", "no annotations"])
def test_each_member_records_its_pointing_game_on_its_validation_images_with_boxes(tmp_path, given):
    from zoo.data import SyntheticSpec, ensure_synthetic, load_dataset
    from zoo.localisation import chance_levels
    from zoo.train import TrainConfig, Trainer

    root = ensure_synthetic(tmp_path / "data", SyntheticSpec(n_train=80, n_test=4))
    coco_path = root / "annotations.coco.json"
    if given != "the data folder's annotations.coco.json":
        coco_path = coco_path.rename(tmp_path / "boxes.coco.json")  # the folder has none of its own
    ds = load_dataset(root)
    cfg = TrainConfig(backbone="resnet10t", epochs=1, img_size=64, lr=1e-3, batch_size=16, head_hidden=[16],
                      calibration_fraction=0, mixed_precision="no", cache_dir="", quiet=True, export=False,
                      boxes=str(coco_path) if given == "--boxes" else None)
    out = tmp_path / "member"
    trainer = Trainer(cfg, ds, out)
    trainer.fit()
    saved = json.loads((out / "config.json").read_text())
    record = saved["metrics"].get("val_localisation")
    assert json.loads((out / "metrics.json").read_text()).get("val_localisation") == record
    if given != "--boxes":  # the data folder's own file is not scored at the end of every training
        assert record is None and "Localisation on the abnormal validation" not in (out / "README.md").read_text()
        return
    paths, hits, energy = _val_hits(out, trainer, coco_path, root)
    assert len(paths) >= 5 and not set(paths) & set(trainer.train_df["path"])  # validation images only
    assert record["file"] == coco_path.name and record["method"] == "gradcam" and record["tolerance"] == 15
    assert record["images"] == len(paths)
    assert record["pointing"] == pytest.approx(hits / len(paths))  # the saved member's maps, scored once each
    assert record["pointing_lo"] <= record["pointing"] <= record["pointing_hi"]
    if np.isfinite(energy):  # maps of a member one epoch old may have no mass at all: no share to give
        assert record["energy"] == pytest.approx(energy)
        assert record["energy_lo"] <= record["energy"] <= record["energy_hi"]
    else:
        assert np.isnan(record["energy"])
    from zoo.localisation import boxes_by_image, load_annotations

    boxes = boxes_by_image(load_annotations(coco_path), paths, root)
    chances = np.array([chance_levels(*boxes[p]) for p in paths])
    assert record["pointing_chance"] == pytest.approx(chances[:, 0].mean())
    assert record["energy_chance"] == pytest.approx(chances[:, 1].mean())
    card = (out / "README.md").read_text()
    assert "Localisation on the abnormal validation images with boxes" in card and coco_path.name in card
    assert "val_localisation" not in card  # a sentence, not a dict in the metrics table


def _yolo_from_coco(coco_path: Path, out: Path) -> Path:
    """The COCO file written as a YOLO folder: out/labels/<split>/<stem>.txt, 'class cx cy w h' normalised (an empty
    file for an image without boxes)."""
    coco = json.loads(coco_path.read_text())
    anns: dict[int, list] = {}
    for a in coco["annotations"]:
        anns.setdefault(a["image_id"], []).append(a["bbox"])
    for img in coco["images"]:
        f = out / "labels" / Path(img["file_name"]).with_suffix(".txt")
        f.parent.mkdir(parents=True, exist_ok=True)
        w, h = img["width"], img["height"]
        f.write_text("".join(f"0 {(x + bw / 2) / w:.8f} {(y + bh / 2) / h:.8f} {bw / w:.8f} {bh / h:.8f}\n"
                             for x, y, bw, bh in anns.get(img["id"], [])))
    return out


def test_a_yolo_folder_gives_the_boxes_and_masks_of_the_same_coco_file(tmp_path, synthetic_root):
    from zoo.data import load_dataset
    from zoo.localisation import YoloLabels, annotations_record, boxes_by_image, load_annotations

    yolo = _yolo_from_coco(synthetic_root / "annotations.coco.json", tmp_path / "yolo")
    ds = load_dataset(synthetic_root)
    paths = ds.train["path"].tolist()
    coco = boxes_by_image(load_annotations(synthetic_root / "annotations.coco.json"), paths, synthetic_root)
    labels = load_annotations(yolo, flag="--boxes")
    assert isinstance(labels, YoloLabels)
    got = boxes_by_image(labels, paths)
    assert len(coco) > 50 and got.keys() == coco.keys()  # matched by stem, wherever the images are
    for p, (b, h, w) in coco.items():
        assert got[p][1:] == (h, w)
        np.testing.assert_allclose(got[p][0], b, atol=1e-4)
    size = 64
    a = box_masks(synthetic_root / "annotations.coco.json", paths, size, synthetic_root)
    b = box_masks(yolo, paths, size)
    assert a.keys() == b.keys()
    same = sum(np.array_equal(a[p], b[p]) for p in a)
    assert same >= 0.9 * len(a), (same, len(a))  # 8 decimals in the labels: a pixel centre on an edge may flip
    assert all((a[p] ^ b[p]).sum() <= 0.1 * a[p].sum() for p in a)
    record = annotations_record(yolo)
    assert record["file"] == "yolo" and annotations_record(yolo) == record  # the folder's content, stably
    first = sorted((yolo / "labels" / "train").glob("*.txt"))[0]
    first.write_text("0 0.5 0.5 0.1 0.1\n")
    assert annotations_record(yolo)["sha256"] != record["sha256"]


def test_a_yolo_folder_that_is_not_one_is_refused_with_the_line(tmp_path):
    from zoo.localisation import load_annotations

    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no YOLO labels"):
        load_annotations(tmp_path / "empty", flag="--boxes")
    (tmp_path / "bad" / "labels").mkdir(parents=True)
    (tmp_path / "bad" / "labels" / "img1.txt").write_text("0 0.5 0.5 0.2 0.2\n0 120 80 30 30\n")
    with pytest.raises(ValueError, match=r"img1.txt:2: not a YOLO box line"):
        load_annotations(tmp_path / "bad", flag="--boxes")


@pytest.mark.slow
def test_train_all_takes_a_yolo_folder_for_boxes(tmp_path, synthetic_root):
    yolo = _yolo_from_coco(synthetic_root / "annotations.coco.json", tmp_path / "yolo")
    proc = run_script("train_all.py", "--data", synthetic_root, *TRAIN, "--quiet", "--no-export", "--boxes", yolo,
                      "--out", tmp_path / "w", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    record = json.loads((tmp_path / "w" / "resnet10t" / "config.json").read_text())["training"]["boxes"]
    assert record["file"] == "yolo" and record["annotated_train_positives"] > 20
    empty = tmp_path / "nothing"
    empty.mkdir()
    bad = run_script("train_all.py", "--data", synthetic_root, *TRAIN, "--boxes", empty, "--out", tmp_path / "bad",
                     cwd=tmp_path)
    assert bad.returncode == 2 and "no YOLO labels" in bad.stderr and not (tmp_path / "bad").exists()


@pytest.mark.slow
def test_a_failing_validation_localisation_keeps_the_member_and_warns(tmp_path, monkeypatch):
    """Only scored: an error (an out-of-memory one included) at the end of training must not lose the member."""
    import zoo.localisation
    from zoo.data import SyntheticSpec, ensure_synthetic, load_dataset
    from zoo.train import TrainConfig, Trainer

    root = ensure_synthetic(tmp_path / "data", SyntheticSpec(n_train=40, n_test=4))

    def oom(*args, **kwargs):
        raise torch.OutOfMemoryError("CUDA out of memory (simulated)")

    monkeypatch.setattr(zoo.localisation, "validation_localisation", oom)
    cfg = TrainConfig(backbone="resnet10t", epochs=1, img_size=32, lr=1e-3, batch_size=16, head_hidden=[8],
                      calibration_fraction=0, mixed_precision="no", cache_dir="", quiet=True, export=False,
                      boxes=str(root / "annotations.coco.json"))
    with pytest.warns(UserWarning, match="validation localisation failed, the member is saved without it: "
                                         "OutOfMemoryError"):
        Trainer(cfg, load_dataset(root), tmp_path / "member").fit()
    metrics = json.loads((tmp_path / "member" / "metrics.json").read_text())
    assert "val_localisation" not in metrics and metrics["val_auc"] is not None
    assert BoneClassifier.load(tmp_path / "member").img_size == 32


def test_validation_localisation_scores_only_abnormal_images_with_boxes_and_at_most_its_limit(tmp_path):
    from zoo.localisation import load_annotations, validation_localisation

    names = ["a.png", "b.png", "c.png", "d.png"]
    (tmp_path / "v.coco.json").write_text(json.dumps({
        "images": [{"id": i, "file_name": f"train/{n}", "height": 32, "width": 32} for i, n in enumerate(names, 1)],
        "annotations": [{"id": i, "image_id": i, "category_id": 1, "bbox": [4, 4, 12, 12], "area": 144,
                         "iscrowd": 0} for i in (1, 2, 4)], "categories": [{"id": 1, "name": "finding"}]}))
    coco = load_annotations(tmp_path / "v.coco.json")
    torch.manual_seed(0)
    model = BoneClassifier("resnet10t", img_size=32, head_hidden=[8])
    array = np.random.default_rng(0).integers(0, 255, (6, 32, 32), dtype=np.uint8)
    paths = [str(tmp_path / n) for n in names] + [str(tmp_path / "e.png")]
    labels = np.array([1.0, 1.0, 1.0, 0.0, 1.0])  # c: no box; d: a box on a normal image; e: not annotated
    rows = np.array([5, 4, 3, 2, 1])
    asked: list[list[int]] = []

    def read(idx):
        asked.append(list(idx))
        return array[rows[idx]]

    record = validation_localisation(model, read, paths, labels, coco)
    assert record["images"] == record["available"] == 2  # a and b only
    assert asked == [[0, 1]]  # only their images are read
    assert record["pointing_chance"] > 0 and 0 <= record["pointing"] <= 1
    assert validation_localisation(model, read, paths, labels, coco, limit=1)["images"] == 1
    assert validation_localisation(model, read, paths, np.zeros(5), coco) is None


@pytest.mark.parametrize(("boxes", "weight", "keep", "kept"), [
    (True, 3.0, "auto", "last"), (False, 3.0, "auto", "best"), (True, 0.0, "auto", "best"),
    (False, 3.0, "last", "last")])
def test_keep_auto_keeps_the_last_epoch_where_a_box_loss_acts_and_the_best_validation_auc_elsewhere(
        tmp_path, synthetic_root, boxes, weight, keep, kept):
    """--keep auto: where a box loss acts (boxes matched, weight > 0) the member is the last epoch's weights (the maps
    go on moving into the boxes after the validation AUC peaks); otherwise the best validation AUC's, as before;
    --keep last asks for the last anyway. The validation AUC is made to peak at epoch 1 of 3, so the two differ."""
    import copy

    from safetensors.torch import load_file

    from zoo.data import load_dataset
    from zoo.train import TrainConfig, Trainer

    cfg = TrainConfig(backbone="resnet10t", epochs=3, img_size=32, head_hidden=[8], lr=1e-3, quiet=True,
                      export=False, cache_dir="", calibration_fraction=0, mixed_precision="no", keep=keep,
                      boxes=str(synthetic_root / "annotations.coco.json") if boxes else None, box_weight=weight)
    trainer = Trainer(cfg, load_dataset(synthetic_root), tmp_path / "m")
    last, export, validate, aucs = {}, trainer.export, trainer.validate, iter([0.9, 0.5, 0.6])

    def scored(*a, **k):  # the epochs' validation AUCs: best at epoch 1
        st, m = validate(*a, **k)
        return st, {**m, "auc": next(aucs, m["auc"])}

    def capture(model, *a, **k):  # the weights after the last epoch, before export loads the kept ones
        last.update(copy.deepcopy(trainer.accelerator.unwrap_model(model)).state_dict())
        return export(model, *a, **k)

    trainer.validate, trainer.export = scored, capture
    metrics = trainer.fit()
    config = json.loads((tmp_path / "m" / "config.json").read_text())["training"]
    card = (tmp_path / "m" / "README.md").read_text()
    weights = load_file(tmp_path / "m" / "model.safetensors")
    assert weights and set(weights) <= set(last)
    same = all(torch.equal(weights[k], last[k]) for k in weights)
    assert config["keep"] == kept and metrics["best_epoch"] == 1
    rows = [json.loads(line) for line in (tmp_path / "m" / "metrics.jsonl").open()]
    assert len(rows) == 3
    if boxes:  # the BCE apart from the box term, and the term's own fit where it acts (null at weight 0)
        if weight > 0:  # the BCE apart: below the loss that adds the box term
            assert all(0 < r["train_bce"] < r["train_loss"] for r in rows), rows
        else:
            assert all(r["train_bce"] == pytest.approx(r["train_loss"], rel=1e-6) for r in rows), rows
        terms = [r["train_box_term"] for r in rows]
        assert all(np.isfinite(t) and t > 0 for t in terms) if weight > 0 else terms == [None] * 3, terms
    else:
        assert not any({"train_bce", "train_box_term"} & set(r) for r in rows)
    if kept == "last":
        assert metrics["kept_epoch"] == metrics["epochs_run"] == 3 and same
        assert "kept epoch 3 (the last trained), `--keep last`; the best validation AUC was at epoch 1" in card
    else:
        assert metrics["kept_epoch"] == 1 and not same
        assert "best epoch 1 by validation AUC, kept" in card
