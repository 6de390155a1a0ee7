"""Learning from boxes (``train_all.py --boxes FILE.coco.json``): pull each member's class-activation map into the
annotated region on annotated positives.

- **Masks.** Annotations are read and matched to training images with :mod:`zoo.localisation`'s readers (a COCO
  json through ``pycocotools``, by file name: boxes, and polygons through their ``bbox``; or a YOLO folder,
  :class:`zoo.localisation.YoloLabels`, by file stem); each box goes through the model input's
  resize and pad (:func:`zoo.localisation.pad_geometry`), so the mask covers the pixels it covers in the stored image.
  :class:`BoxDataset` augments the image and its mask (a ``tv_tensors.Mask``) in one call of the same torchvision v2
  pipeline: every geometric step (crop, flip, rotation, translation) moves both alike, intensity steps leave the mask
  alone, and the image draws exactly the random numbers it draws without a mask.
- **The loss** (:class:`BoxLoss`: attention supervision as in Li et al. 2018 GAIN and Ross et al. 2017 "right for
  the right reasons", in the form of a soft pointing game): a differentiable Grad-CAM at the backbone's CAM layer
  (its spec's ``cam_layer``, the ViT token reshape of :func:`zoo.cam.cam_target`; no per-backbone code). A forward
  hook keeps the layer's output A; the weights are the spatial mean of d logit / d A (``create_graph=True``), and the
  map ``M = sum_c w_c A_c`` (pytorch-grad-cam's ``GradCAM`` before its ReLU) is read on the layer's own grid. Each
  annotated positive's map is standardised over its cells (``z``, spread ``s``) and the loss is ``s`` (held
  constant) times ``-log`` of the ``softmax(SHARPNESS * z)`` mass on its target cells, those whose peak pixel lies in
  the pointing game's hit region, the boxes grown by its 15-px tolerance (:func:`pointing_loss`): the pointing game's
  hit (the map's maximum on the box) made differentiable, which also keeps the map from concentrating anywhere
  outside, with a gradient of the BCE's own order whatever the map's scale. Plus the map's sign
  (:func:`sign_loss`): pytorch-grad-cam's ReLU shows only the positive part, so the map is pushed below 0 outside the
  target cells and kept above 0 at its best target cell (the shown map then peaks on the box and is 0 elsewhere:
  its energy share). Averaged over the annotated positives of
  the batch and added to the BCE with weight ``box_weight`` (ramped linearly from 0 over ``box_warmup`` epochs).
  Chosen over the earlier loss, ``1 - energy share`` of the min-max-normalised map, on held-out FracAtlas images
  (``bench/boxes_heldout.py``; that one's gradient vanishes while the share is small, and it left the pointing game
  near chance).
- **Cost.** A batch with annotated positives pays a second-order backward through the layers above the CAM layer
  (the last stage and the head); a batch without any trains exactly as without ``--boxes``. Measured by
  ``bench/box_cost.py`` (``BOX_COST`` below, used by ``--budget-minutes``): a few per cent a step.

Validation, calibration and test never see boxes (only the training dataset is wrapped). Nothing is kept per process
but the activation of the forward in flight, so DDP and gradient accumulation work unchanged; under bf16 autocast the
map is computed in fp32.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import nn

from zoo.inference import ArrayDataset

# --budget-minutes: seconds per training step with --boxes / without, every image an annotated positive (the worst
# case): bench/box_cost.py, regnetx_002 and resnet10t at 96, 128 and 384 px, CPU, fp32, 0.92-1.07 (median 1.02; the
# second-order backward runs only through the layers above the CAM layer). Not measured for
# a ViT (whose attention runs unfused while the loss is attached) nor on a GPU, and the alternated steps differ by up
# to 8% where the work is the same or more: 1.15 leaves that noise as margin
BOX_COST = 1.15
# what config.json and the card name it, and resume compares (before: "grad-cam energy share", then "grad-cam soft
# pointing game": the map of the train-mode head, targets by one peak pixel a cell; then "... v2": without the sign)
BOX_LOSS = "grad-cam soft pointing game v2 + sign"
SHARPNESS = 2.0  # of the soft pointing game's softmax over the standardised map (bench/README.md)


def file_record(path: str | Path) -> dict:
    """What config.json records of the boxes file (or YOLO folder): its name and SHA-256
    (:func:`zoo.localisation.annotations_record`)."""
    from zoo.localisation import annotations_record

    return annotations_record(path)


def box_masks(path: str | Path, paths: list[str], size: int, root: str | Path | None = None,
              tolerance: float | None = None) -> dict[str, np.ndarray]:
    """``image path -> bool (size, size) mask`` of its annotated boxes in the model input (after resize and pad),
    for each of ``paths`` the COCO file (or YOLO folder) ``path`` annotates (:func:`zoo.localisation.boxes_by_image`:
    by path relative to ``root``, else base name; YOLO by stem). With ``tolerance`` (stored pixels), the pointing
    game's hit region instead (:func:`zoo.localisation.hit_region`: the boxes grown by it): what the loss trains."""
    from zoo.localisation import _box_mask, boxes_by_image, hit_region, load_annotations, pad_geometry

    coco = load_annotations(path, flag="--boxes")
    if tolerance is None:
        return {p: _box_mask(pad_geometry(h, w, size).to_input(b), (size, size))
                for p, (b, h, w) in boxes_by_image(coco, paths, root).items()}
    return {p: hit_region(b, pad_geometry(h, w, size), tolerance)
            for p, (b, h, w) in boxes_by_image(coco, paths, root).items()}


class BoxDataset(ArrayDataset):
    """An :class:`ArrayDataset` whose items carry the image's box mask: ``(uint8 (1, S, S), label, position,
    uint8 (1, S, S) mask)`` (all zeros for an image without annotations), both augmented by one call."""

    def __init__(self, base: ArrayDataset, masks: dict[int, np.ndarray]):
        super().__init__(base.images, base.rows, base.labels, base.augment)
        self.masks = masks  # dataset position -> bool (S, S)

    def __getitem__(self, i: int):
        from torchvision import tv_tensors

        x = torch.from_numpy(self.images.read(self.rows[i]))[None]
        m = self.masks.get(i)
        m = torch.zeros_like(x) if m is None else torch.from_numpy(m.astype(np.uint8))[None]
        if self.augment is not None:
            x, m = self.augment(x, tv_tensors.Mask(m))
        return x, self.labels[i], i, m.as_subclass(torch.Tensor)


def describe(record: dict, weight: float, warmup: float, keep: str = "best") -> str:
    """One line for the training log: what ``--boxes`` matched and what it does."""
    if not record["annotated_train_positives"]:
        return (f"--boxes {record['file']}: no positive training image has a box ({record['annotated_train_images']} "
                "training images matched by file name); training without box supervision, exactly as without --boxes")
    return (f"--boxes {record['file']}: {record['annotated_train_positives']} positive training images with boxes "
            f"({record['annotated_train_images']} matched); CAM pointing + sign loss x{weight:g}, warm-up {warmup:g} "
            f"epochs; keeps {'the best validation AUC' if keep == 'best' else 'the last'} epoch")


def box_dataset(base: ArrayDataset, paths: list[str], path: str | Path, root: str | Path | None = None
                ) -> tuple[BoxDataset | None, dict]:
    """``base`` (the training split, ``paths`` in its order) with the masks of ``path`` for the images it annotates,
    and the record for config.json; ``(None, record)`` when it annotates none of them (train as without)."""
    from zoo.localisation import TOLERANCE

    size = int(base.images.size)
    by_path = box_masks(path, paths, size, root, tolerance=TOLERANCE)
    masks = {i: by_path[p] for i, p in enumerate(paths) if p in by_path}
    positives = sum(1 for i in masks if base.labels[i] >= 0.5)
    record = {**file_record(path), "annotated_train_images": len(masks), "annotated_train_positives": positives}
    return (BoxDataset(base, masks) if positives else None), record


def cam_map(activation: torch.Tensor, logits: torch.Tensor, reshape=None) -> torch.Tensor:
    """Differentiable Grad-CAM of ``logits`` (those of the images that need a map) at the CAM layer's output
    ``activation``, brought to (B, C, h, w) by ``reshape`` (with its gradient, as pytorch-grad-cam does): the map
    ``sum_c w_c A_c`` with ``w_c`` the spatial mean of d logits / d A_c, before the ReLU, on the layer's grid, fp32,
    (B, h, w), with the graph kept. Images whose logits are not given get a zero map."""
    grads = torch.autograd.grad(logits.sum(), activation, create_graph=True)[0]
    if reshape is not None:
        activation, grads = reshape(activation), reshape(grads)
    a, g = activation.float(), grads.float()
    return (g.mean((2, 3), keepdim=True) * a).sum(1)


def gradcam(activation: torch.Tensor, logits: torch.Tensor, size: int, reshape=None) -> torch.Tensor:
    """:func:`cam_map` as pytorch-grad-cam's GradCAM shows it: ReLU, min-max normalised per image and resized to
    (B, size, size) bilinearly, differentiable (what the demo draws and :mod:`zoo.localisation` scores)."""
    return shown(cam_map(activation, logits, reshape), size)


def shown(cam: torch.Tensor, size: int) -> torch.Tensor:
    """A pre-ReLU map on the CAM grid (B, h, w) as pytorch-grad-cam shows it: ReLU, min-max normalised per image,
    resized to (B, size, size) bilinearly with half-pixel centres; differentiable."""
    cam = torch.relu(cam)
    flat = cam.flatten(1)
    lo, hi = flat.min(1).values[:, None, None], flat.max(1).values[:, None, None]
    cam = (cam - lo) / (hi - lo + 1e-7)
    return nn.functional.interpolate(cam[:, None], size=(size, size), mode="bilinear", align_corners=False)[:, 0]


def peak_pixels(cells: int, size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Where the evaluated map of each of ``cells`` grid rows (or columns) can peak in a ``size``-pixel input, as two
    candidates ``(first, second)`` a cell: pytorch-grad-cam resizes the grid bilinearly with half-pixel centres
    (OpenCV), so a cell's value sits at ``c = (i + 0.5) size / cells - 0.5``. An inner cell's maximum (the first,
    NumPy's ``argmax``) is ``floor(c)`` or ``ceil(c)``, towards its larger neighbour; the first cell's value is held
    from the border to ``c``, so its first maximum is pixel 0; the last cell's is held from ``c`` to the border, so
    it is ``ceil(c)``."""
    c = (torch.arange(cells, dtype=torch.float64) + 0.5) * size / cells - 0.5
    first, second = torch.floor(c).long(), torch.ceil(c).long()
    first[0] = second[0] = 0
    first[-1] = second[-1]
    return first.clamp(0, size - 1), second.clamp(0, size - 1)


def target_cells(grid: tuple[int, int], mask: torch.Tensor) -> torch.Tensor:
    """The target cells of a (h, w) ``grid`` for each mask (B, H, W), (B, h w) bool: those whose peak pixels
    (:func:`peak_pixels`) all lie in the mask; where no cell's do, those with one that does; where none has one (a grid
    coarser than the boxes), every cell the mask touches; for an empty mask, every cell."""
    h, w = grid
    rows, cols = peak_pixels(h, mask.shape[-2]), peak_pixels(w, mask.shape[-1])
    corners = torch.stack([mask[:, r][:, :, c].flatten(1) > 0 for r in rows for c in cols])  # (4, B, h w)
    sure, some = corners.all(0), corners.any(0)
    touched = nn.functional.adaptive_max_pool2d(mask[:, None].float(), (h, w))[:, 0].flatten(1) > 0
    cells = torch.where(sure.any(1, keepdim=True), sure, torch.where(some.any(1, keepdim=True), some, touched))
    return cells | ~cells.any(1, keepdim=True)  # an empty mask: every cell (no loss, no NaN)


def pointing_loss(cam: torch.Tensor, mask: torch.Tensor, sharpness: float = SHARPNESS) -> torch.Tensor:
    """The soft pointing game on ``cam``'s grid (B, h, w), (B,), in the map's own units.

    The target cells (:func:`target_cells`) are those whose peak pixels (:func:`peak_pixels`: where the evaluated
    CAM's maximum can land when the cell is the grid's maximum) all lie in the mask (B, H, W: the pointing game's hit
    region, :func:`box_masks` with a tolerance); where no cell's do, those with one that does; where none has one (a
    grid coarser than the boxes), every cell the mask touches. With ``z`` the map standardised over its cells and
    ``s`` its spread held constant, the loss is ``s`` times ``-log`` of the ``softmax(sharpness * z)`` mass on the
    target cells, times the mask's largest value (1; under mixup, the share of the annotated image); 0 for an empty
    mask.

    Unchanged by an offset of the map and proportional to its scale, with no gradient along it: the gradient only
    moves where the map peaks, and is bounded (at most ``3 sharpness`` a cell) whatever the map's scale, where a
    standardised map's without ``s`` grows as ``1 / s`` (a small map's gradient then swamps the BCE's in Adam's moments,
    and cost AUC: bench/README.md). 0 when every cell is a target, and for a flat map. Being blind to the offset, it
    does not see that pytorch-grad-cam's ReLU flattens a map whose largest cell is <= 0 (the evaluated pointing game
    counts that a miss), nor what the map shows outside the box: :func:`sign_loss` does."""
    cells = target_cells(cam.shape[-2:], mask)
    flat = cam.flatten(1)
    spread = flat.std(1, correction=0, keepdim=True)  # 0 on a 1 x 1 grid, not NaN
    z = sharpness * (flat - flat.mean(1, keepdim=True)) / (spread + 1e-6)
    miss = torch.logsumexp(z, 1) - torch.logsumexp(z.masked_fill(~cells, -torch.inf), 1)
    return (spread[:, 0].detach() + 1e-6) * miss * mask.flatten(1).amax(1)


def sign_loss(cam: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """The map's sign on ``cam``'s grid (B, h, w), (B,), in the map's own units: pytorch-grad-cam's ReLU shows only a
    map's positive part, so with ``u`` the map in units of its spread ``s`` (held constant), the loss is ``s`` times
    the mean of ``relu(u)`` over the cells outside the targets (:func:`target_cells`: positive evidence there is drawn
    and counted in the energy share) plus ``relu(1 - max u)`` over the targets (the largest must stay above 0, or the
    ReLU flattens the map and the pointing game counts a miss), times the mask's largest value; 0 for an empty mask.

    What :func:`pointing_loss` cannot see (it is blind to the offset): together they make the shown map peak on the
    box and stay at 0 elsewhere. Proportional to the map's scale, its gradient at most 1 a cell."""
    cells = target_cells(cam.shape[-2:], mask)
    flat = cam.flatten(1)
    spread = flat.std(1, correction=0, keepdim=True).detach() + 1e-6
    u = flat / spread
    others = ~cells
    outside = (torch.relu(u) * others).sum(1) / others.sum(1).clamp_min(1)  # 0 when every cell is a target
    inside = torch.relu(1 - u.masked_fill(others, -torch.inf).amax(1))
    return spread[:, 0] * (outside + inside) * mask.flatten(1).amax(1)


def in_spread_units(term: torch.Tensor, cam: torch.Tensor) -> torch.Tensor:
    """A box term (B,) of :func:`pointing_loss` and :func:`sign_loss` (both proportional to the map's spread, held
    constant) divided by that spread: the same term whatever the map's scale (no gradient)."""
    return term.detach() / (cam.detach().flatten(1).std(1, correction=0) + 1e-6)


class BoxLoss(nn.Module):
    """``loss(logits, target, mask=None)``: the BCE ``base`` plus ``weight * ramp * mean(term)`` of the
    differentiable Grad-CAM (:func:`cam_map`; :meth:`term`: :func:`pointing_loss` plus :func:`sign_loss`) over the
    annotated positives (target >= 0.5, a non-empty mask).

    Hooks ``model``'s CAM layer (only while training with gradients; validation and the weight EMA are untouched).
    Without a mask, or with no annotated positive in the batch, it is ``base`` exactly."""

    def __init__(self, base: nn.Module, model: nn.Module, weight: float, warmup: float = 0.0):
        super().__init__()
        from zoo.cam import cam_target

        self.base, self.weight, self.warmup, self.ramp = base, float(weight), float(warmup), 1.0
        layer, self.reshape = cam_target(model)
        held: dict[str, torch.Tensor] = {}
        head = model.head
        self._held, self._heads = held, (head,)  # a tuple: the model's head is not this loss's submodule
        self.supervised = 0  # annotated positives the box term was added for, in this process since it was built
        self._sums: torch.Tensor | None = None  # this epoch's (BCE sum, images, box fit sum, annotated positives)

        # both gated on the head's mode (not the CAM layer's own, which may be a BatchNorm held in eval mode); a deep
        # copy of the model (the weight EMA) carries these hooks and shares ``held``, but is only ever run in eval
        # mode or without gradients, where they keep nothing
        def keep(module, inputs, output):
            if head.training and torch.is_grad_enabled():
                held["a"] = output

        def keep_features(module, inputs):
            if head.training and torch.is_grad_enabled():
                held["f"] = inputs[0]

        self._hooks = [layer.register_forward_hook(keep), model.head.register_forward_pre_hook(keep_features)]
        # fused attention kernels (SDPA flash/efficient) have no double backward: timm's attention layers compute
        # it explicitly instead while the loss is attached (same maths, more memory)
        self._unfused = [m for m in model.modules() if getattr(m, "fused_attn", False) is True]
        for m in self._unfused:
            m.fused_attn = False

    def set_epoch(self, epoch: int) -> None:
        """Linear warm-up: 0 in epoch 1, full weight from epoch ``1 + warmup`` (full from the start for 0)."""
        self.ramp = 1.0 if self.warmup <= 0 else min(1.0, (epoch - 1) / self.warmup)
        self._sums = None

    def epoch_stats(self, accelerator=None) -> dict[str, float | None]:
        """Since :meth:`set_epoch`, over every process with ``accelerator`` (metrics.jsonl's columns):
        ``train_bce``, the mean BCE (``base``) per training image, without the box term; ``train_box_term``, the mean
        box term (:meth:`term`) per annotated positive it was added for, unweighted and in units of each map's spread
        (:func:`in_spread_units`), so it says how well the maps fit the boxes whatever the weight and the maps' scale
        (0: every map on its box and 0 elsewhere), None where the term acted on none (a warm-up epoch of weight 0
        included). Under ``--mixup`` a mixed image's term is scaled by its annotated image's share."""
        sums = torch.zeros(4, dtype=torch.float64) if self._sums is None else self._sums
        if accelerator is not None:
            sums = accelerator.reduce(sums.to(accelerator.device), reduction="sum")
        sums = sums.tolist()
        return {"train_bce": sums[0] / sums[1] if sums[1] else None,
                "train_box_term": sums[2] / sums[3] if sums[3] else None}

    def _add(self, loss: torch.Tensor, images: int, fit: torch.Tensor | None = None) -> None:
        """Into this epoch's sums, on the batch's device, in place: ``loss`` (``base``'s mean over the batch's
        ``images``) and the box term in spread units of each annotated positive (``fit``). Python counts are added
        as kernel scalars, not copied to the device: no host-device copy or synchronisation a step."""
        if self._sums is None:
            self._sums = torch.zeros(4, dtype=torch.float64, device=loss.device)
        sums = self._sums
        sums[0] += loss.detach().double() * images
        sums[1] += images
        if fit is not None:
            sums[2] += fit.detach().double().sum()
            sums[3] += len(fit)

    def remove(self) -> None:
        """Release the hook and give attention layers their fused kernels back."""
        for hook in self._hooks:
            hook.remove()
        for m in self._unfused:
            m.fused_attn = True

    def forward(self, logits: torch.Tensor, target: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        loss = self.base(logits, target)
        term, cam = self._box_term(target, mask)
        self._add(loss, len(target), None if term is None else in_spread_units(term, cam))
        return loss if term is None else loss + self.weight * self.ramp * term.mean()

    def _box_term(self, target: torch.Tensor, mask: torch.Tensor | None) -> tuple:
        """(:meth:`term` of each annotated positive, its map on the grid), or (None, None) where none acts: no mask,
        no held activation (validation), weight or ramp 0, or no annotated positive in the batch. Always takes what the
        hooks held, so a step never sees the previous one's."""
        activation, features = self._held.pop("a", None), self._held.pop("f", None)
        if mask is None or activation is None or features is None or self.weight * self.ramp == 0:
            return None, None
        mask = mask.reshape(len(mask), -1, *mask.shape[-2:])[:, 0].float()
        pick = (target.reshape(-1) >= 0.5) & (mask.flatten(1).amax(1) > 0)
        if not bool(pick.any()):
            return None, None
        cam = cam_map(activation, self.scored_logits(features[pick]), self.reshape)[pick]
        self.supervised += int(pick.sum())
        return self.term(cam, mask[pick]), cam

    def scored_logits(self, features: torch.Tensor) -> torch.Tensor:
        """The logits the map is taken of: the head run again on the pooled ``features`` (with their graph) in eval
        mode, as the evaluated Grad-CAM runs it. In train mode the head's BatchNorm would make each image's logit
        depend on every image of the batch (and its dropout on chance), so one image's Grad-CAM weights would carry
        the others' gradients; in eval mode each map's weights are its own image's. (The activation itself is the
        training forward's: a backbone's train-mode BatchNorm below the CAM layer still normalises it with the
        batch's statistics, as training does.) No running statistic is updated. In the
        head's own dtype (fp32 weights; the features of a bf16 autocast forward are cast up, with their gradient)."""
        head = self._heads[0]
        was = head.training
        head.eval()
        try:
            return head(features.to(next(head.parameters()).dtype)).reshape(-1)  # bf16 features under autocast
        finally:
            head.train(was)

    def term(self, cam: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """The box term of each annotated positive, (B,), from its pre-ReLU Grad-CAM on the layer's grid
        (:func:`cam_map`, (B, h, w)) and its mask (B, H, W): :func:`pointing_loss` plus :func:`sign_loss`."""
        return pointing_loss(cam, mask) + sign_loss(cam, mask)
