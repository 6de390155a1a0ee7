"""Ranking quality on real radiographs at a fixed training budget: every recipe, trained on FracAtlas `train`, scored
on `test` (../shared/data/fracatlas-hand; CC BY 4.0, Abedeen et al. 2023). No ImageNet weights (this machine is
offline), the machine it runs on, one command:

  python bench/quality.py                          # seed and modern, 20 minutes of training each
  python bench/quality.py --recipes modern --budget-minutes 10

Each recipe runs as a user would: ``train_all.py --data D --recipe R --budget-minutes M`` (the preset measures
this machine and chooses backbones, size, folds and epochs), then ``predict.py --evaluate`` with its default
ensemble (``auto``: the combiner chosen on the validation / out-of-fold predictions). The test split is only scored,
never used to choose anything. Writes bench/out/quality/<recipe>/ and appends the table to bench/README.md with
``--write-readme``.
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import time
from datetime import date
from pathlib import Path

import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data" / "fracatlas-hand"


def run_recipe(recipe: str, args: argparse.Namespace, out: Path) -> dict:
    run = out / recipe / "weights"
    t0 = time.perf_counter()
    train = subprocess.run([sys.executable, str(ROOT / "train_all.py"), "--data", args.data, "--recipe", recipe,
                            "--budget-minutes", str(args.budget_minutes), "--no-pretrained", "--out", str(run),
                            "--seed", str(args.seed), "--quiet"], capture_output=True, text=True)
    wall = time.perf_counter() - t0
    (out / recipe / "train.log").write_text(train.stdout + train.stderr)
    if train.returncode != 0:
        raise SystemExit(f"{recipe}: train_all.py failed ({train.returncode}); see {out / recipe / 'train.log'}")
    plan = next((line.split("budget: ", 1)[1] for line in (train.stdout + train.stderr).splitlines()
                 if line.startswith("budget: ") and " -> " in line), "")  # the planner's choice, on either stream
    report = out / recipe / "report"
    pred = subprocess.run([sys.executable, str(ROOT / "predict.py"), "--data", args.data, "--models", str(run),
                           "-output", str(out / recipe / "test_predictions.csv"), "--evaluate", "--report-dir",
                           str(report), "--quiet", *(["--tta"] if args.tta else [])], capture_output=True, text=True)
    (out / recipe / "predict.log").write_text(pred.stdout + pred.stderr)
    if pred.returncode != 0:
        raise SystemExit(f"{recipe}: predict.py failed; see {out / recipe / 'predict.log'}")
    m = pd.read_csv(report / "metrics.csv")
    m = m[m["part"] == "ALL"].set_index("model")
    ens = m.loc["ensemble"]
    members = m.drop(index=[i for i in m.index if i.startswith("ensemble")])
    singles = members[[("-fold" in i) or not any(j.startswith(i + "-fold") for j in members.index)
                       for i in members.index]]  # member folders; a backbone's fold mean ("bag") is not one
    bags = members.drop(index=singles.index)
    chosen = next((line for line in (report / "report.md").read_text().splitlines() if "Ensemble:" in line), "")
    oof = run / "oof_predictions.csv"
    return {
        "recipe": recipe, "plan": plan, "wall_min": wall / 60, "members": members["auc"].to_dict(),
        "best_member": singles["auc"].idxmax(), "best_member_auc": float(singles["auc"].max()),
        "best_bag": bags["auc"].idxmax() if len(bags) else "", "best_bag_auc": float(bags["auc"].max())
        if len(bags) else float("nan"), "ensemble_auc": float(ens["auc"]), "ensemble_kappa": float(ens["kappa"]),
        "margin": float(ens["auc"] - singles["auc"].max()),
        "margin_bag": float(ens["auc"] - bags["auc"].max()) if len(bags) else float("nan"),
        "combiner": chosen.split("Ensemble: ", 1)[1].split(" of ", 1)[0] if "Ensemble: " in chosen else "",
        "oof": oof.is_file(),
    }


def table(rows: list[dict]) -> str:
    lines = ["| recipe | plan chosen by --budget-minutes | wall (min) | test AUC per member (and per backbone's fold "
             "mean) | ensemble (combiner) | ensemble AUC | kappa | - best member | - best fold mean |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        per = ", ".join(f"{k} {v:.3f}" for k, v in r["members"].items())
        bag = f"{r['margin_bag']:+.3f}" if r["best_bag"] else "n/a"
        lines.append(f"| {r['recipe']} | {r['plan']} | {r['wall_min']:.1f} | {per} | {r['combiner']} | "
                     f"**{r['ensemble_auc']:.3f}** | {r['ensemble_kappa']:.3f} | {r['margin']:+.3f} "
                     f"({r['best_member']}) | {bag} |")
    return "\n".join(lines)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", default=str(DATA), help="dataset folder (default %(default)s)")
    p.add_argument("--recipes", nargs="+", default=["seed", "modern"])
    p.add_argument("--budget-minutes", type=float, default=20.0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--tta", action="store_true", help="predict with horizontal-flip test-time augmentation")
    p.add_argument("--out", default=str(ROOT / "bench" / "out" / "quality"))
    p.add_argument("--write-readme", action="store_true", help="append the table to bench/README.md")
    args = p.parse_args()
    if not Path(args.data).is_dir():
        print(f"skip: {args.data} not present")
        return 0
    out = Path(args.out)
    rows = []
    for recipe in args.recipes:
        (out / recipe).mkdir(parents=True, exist_ok=True)
        rows.append(run_recipe(recipe, args, out))
        print(json.dumps(rows[-1], indent=1), flush=True)
    text = (f"`python bench/quality.py --budget-minutes {args.budget_minutes:g}{' --tta' if args.tta else ''}` "
            f"({date.today()}, {platform.processor() or platform.machine()}, no GPU, no ImageNet weights):\n\n"
            + table(rows) + "\n")
    print(text)
    (out / "table.md").write_text(text)
    if args.write_readme:
        with open(ROOT / "bench" / "README.md", "a") as fh:
            fh.write("\n" + text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
