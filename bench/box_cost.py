"""What ``train_all.py --boxes`` costs per training step: ``zoo.boxes.BOX_COST``, the factor ``--budget-minutes``
applies to the training time of a run with boxes.

The worst case: every image of the batch an annotated positive, so every step pays the box loss's differentiable
Grad-CAM and its second-order backward. One optimiser step (forward, loss, backward, Adam) with the plain weighted
BCE and with :class:`zoo.boxes.BoxLoss` around it, alternated step by step on the same model and batch so both arms
see the same machine load; the median of ``--steps`` steps each, after two warm-up steps.

    python bench/box_cost.py                       # regnetx_002 and resnet10t at 96 and 128 px, batch 16
    python bench/box_cost.py --sizes 384 --batch 8
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def step_times(backbone: str, size: int, batch: int, steps: int) -> tuple[float, float]:
    """Median seconds of one training step without and with the box loss (every image an annotated positive)."""
    import torch

    from zoo.boxes import BoxLoss
    from zoo.loss import WeightedBCE
    from zoo.model import BoneClassifier

    torch.manual_seed(0)
    model = BoneClassifier(backbone, img_size=size).train()
    opt = torch.optim.Adam(model.parameters(), lr=1e-4)
    base = WeightedBCE(2.0)
    boxed = BoxLoss(base, model, weight=1.0)
    x = torch.randn(batch, 1, size, size)
    y = torch.ones(batch)
    mask = torch.zeros(batch, 1, size, size, dtype=torch.uint8)
    mask[:, :, size // 4: size // 2, size // 3: size // 2] = 1  # a box in every image

    checked: list[bool] = []

    def step(with_boxes: bool) -> float:
        t0 = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        logits = model(x)
        loss = boxed(logits, y, mask) if with_boxes else base(logits, y)
        if with_boxes and not checked:  # the box term is in the loss timed (not a no-op)
            assert float(loss.detach()) > float(base(logits.detach(), y)), "the box loss added nothing"
            checked.append(True)
        loss.backward()
        opt.step()
        return time.perf_counter() - t0

    for _ in range(2):
        step(False), step(True)
    plain, withb = [], []
    for _ in range(steps):
        plain.append(step(False))
        withb.append(step(True))
    boxed.remove()
    return statistics.median(plain), statistics.median(withb)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--backbones", nargs="+", default=["regnetx_002", "resnet10t"])
    p.add_argument("--sizes", type=int, nargs="+", default=[96, 128])
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--steps", type=int, default=8)
    args = p.parse_args()
    import pandas as pd
    import torch

    from zoo.boxes import BOX_COST

    rows = []
    for backbone in args.backbones:
        for size in args.sizes:
            plain, withb = step_times(backbone, size, args.batch, args.steps)
            rows.append({"backbone": backbone, "px": size, "batch": args.batch, "step s, without": plain,
                         "step s, with boxes": withb, "with / without": withb / plain})
            print(rows[-1], file=sys.stderr)
    table = pd.DataFrame(rows)
    print(table.to_markdown(index=False, floatfmt=".3f"))
    print(f"\nmedian ratio {table['with / without'].median():.2f} (zoo.boxes.BOX_COST = {BOX_COST}); "
          f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    return 0


if __name__ == "__main__":
    sys.exit(main())
