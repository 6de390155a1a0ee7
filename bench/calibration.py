"""Calibration and triage on real radiographs: ECE before/after calibration and triage at a target error rate.

  python bench/calibration.py --seeds 0 1 2 3 4       # FracAtlas hand, 2 small members, 128 px, 6 epochs, CPU
  python bench/calibration.py --semi-supervised --seeds 0 1 2   # the pseudo-labelling gain, repeated over seeds
  python bench/calibration.py --compare-maps RUN        # calibration maps on a --folds run's out-of-fold predictions

Trains on ``train`` (validation split inside it), predicts ``test`` twice (raw with --no-calibrate, and calibrated
with --triage), and prints ECE / Brier / AUC of members and ensemble (raw vs calibrated) and the triage share decided
and error among decided studies, overall and per body part. Numbers go to bench/README.md by hand, with the command.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data" / "fracatlas-hand"


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", default=str(DATA))
    p.add_argument("--models", nargs="+", default=["resnet10t", "regnetx_002"])
    p.add_argument("--img-size", type=int, default=128)
    p.add_argument("--epochs", type=int, default=6)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--triage", type=float, default=0.05)
    p.add_argument("--semi-supervised", action="store_true", help="instead: train with --semi-supervised and compare "
                   "the test AUC of round 1 (labelled only) and round 2 (with pseudo-labels), once per --seeds")
    p.add_argument("--seeds", type=int, nargs="+", default=[0], help="training seeds, one run each; results per seed "
                   "and their mean (default: 0)")
    p.add_argument("--pseudo-confidence", type=float, default=0.9, help="with --semi-supervised: passed to "
                   "train_all.py (default %(default)s; 0.5 uses every unlabelled study with its soft target)")
    p.add_argument("--compare-maps", metavar="RUN", default=None, help="instead: on RUN's validation (out-of-fold) "
                   "predictions, fit each calibration map on all but --test-size studies and score it on the rest, "
                   "over --splits random splits (what ECE a test split of that size can show)")
    p.add_argument("--test-size", type=int, default=217, help="with --compare-maps (default: FracAtlas test, 217)")
    p.add_argument("--fit-size", type=int, default=None, help="with --compare-maps: fit on this many studies (default: "
                   "all but --test-size; 155 is a single run's validation split on FracAtlas)")
    p.add_argument("--splits", type=int, default=400, help="with --compare-maps (default %(default)s)")
    p.add_argument("--out", default=str(ROOT / "bench" / "out" / "calibration"))
    args = p.parse_args()
    if not Path(args.data).is_dir():
        print(f"skip: {args.data} not present")
        return 0
    out = Path(args.out)
    if args.compare_maps:
        return compare_maps(args)
    if args.semi_supervised:
        return semi_supervised(args, out / "semi")
    return calibration(args, out)


def _train(args, seed: int, run: Path, *extra: str) -> None:
    """train_all.py with the bench's members and settings into ``run``, unless it finished there before."""
    if not (run / "leaderboard.csv").is_file():
        subprocess.run([sys.executable, str(ROOT / "train_all.py"), "--data", args.data, "--models", *args.models,
                        "--img-size", str(args.img_size), "--epochs", str(args.epochs), "--lr", str(args.lr),
                        "--seed", str(seed), "--out", str(run), "--quiet", *extra], check=True)


def _evaluate(args, run: Path, folder: Path, *extra: str):
    """predict.py --evaluate on the test split into ``folder``; its overall metrics, one row per model."""
    import pandas as pd

    subprocess.run([sys.executable, str(ROOT / "predict.py"), "--data", args.data, "--models", str(run), "--evaluate",
                    "--quiet", "-output", str(folder / "test.csv"), *extra], check=True, stdout=subprocess.DEVNULL)
    m = pd.read_csv(folder / "metrics.csv")
    return m[m["part"] == "ALL"].set_index("model")


def calibration(args, out: Path) -> int:
    """Per seed: train, predict test raw (--no-calibrate) and calibrated with --triage; ECE before/after with what a
    calibrated model would show on these studies, and the triage share decided / error among decided."""
    import numpy as np
    import pandas as pd

    from zoo.calibration import triage_summary
    from zoo.data import load_dataset

    test = load_dataset(args.data).test
    labels = test.groupby("id", as_index=False)["label"].first()
    rows = []
    for seed in args.seeds:
        run = out / f"seed{seed}" / "weights"
        _train(args, seed, run)
        raw = _evaluate(args, run, run.parent / "raw", "--no-calibrate")
        cal = _evaluate(args, run, run.parent / "calibrated", "--triage", str(args.triage))
        report = (run.parent / "calibrated" / "report.md").read_text()
        print(f"\n### seed {seed}, test split, calibrated\n")
        print(report[report.index("## Overall"):report.index("## Per body part")])
        print(report[report.index("## Triage"):])
        pred = pd.read_csv(run.parent / "calibrated" / "test.csv").merge(labels, on="id", suffixes=("", "_true"))
        tri = triage_summary(pred["label_true"].to_numpy(), pred["triage"].to_numpy())
        for model in [*args.models, "ensemble"]:
            rows.append({"seed": seed, "model": model, "auc": cal.loc[model, "auc"], "ece raw": raw.loc[model, "ece"],
                         "ece calibrated": cal.loc[model, "ece"], "ece if calibrated": cal.loc[model,
                                                                                             "ece_if_calibrated"],
                         "ece p": cal.loc[model, "ece_p"], "brier raw": raw.loc[model, "brier"],
                         "brier calibrated": cal.loc[model, "brier"],
                         "triage share decided": tri["share_decided"] if model == "ensemble" else np.nan,
                         "triage error among decided": tri["error_among_decided"] if model == "ensemble" else np.nan})
    table = pd.DataFrame(rows)
    table.to_csv(out / "calibration.csv", index=False)
    print("\n### test split, per seed\n")
    print(table.to_markdown(index=False, floatfmt=".3f"))
    ens = table[table["model"] == "ensemble"]
    print(f"\nensemble ECE calibrated: mean {ens['ece calibrated'].mean():.3f} over {len(ens)} seed(s) (raw "
          f"{ens['ece raw'].mean():.3f}; a perfectly calibrated model would show {ens['ece if calibrated'].mean():.3f}"
          f" on these studies); <= 0.05 in {int((ens['ece calibrated'] <= 0.05).sum())} of {len(ens)}")
    return 0


def compare_maps(args) -> int:
    """Calibration maps compared on held-out validation studies: mean ECE over random splits, how often it is <= 0.05,
    the ECE a perfectly calibrated model would show on the same held-out studies, and the held-out log-loss."""
    import warnings

    import numpy as np
    import pandas as pd
    from scipy.optimize import minimize_scalar
    from sklearn.isotonic import IsotonicRegression
    from sklearn.linear_model import LogisticRegression

    from zoo.calibration import Calibrator, ece
    from zoo.ensemble import Ensemble

    warnings.filterwarnings("ignore")
    ens = Ensemble.from_paths([args.compare_maps], method="mean")
    val = ens.validation_studies(calibrated=False)  # raw out-of-fold scores, one column per backbone
    s, y = val[ens.group_names].mean(axis=1).to_numpy(), val["label"].to_numpy(dtype=int)
    eps = 1e-6
    logit = lambda p: np.log(np.clip(p, eps, 1 - eps) / (1 - np.clip(p, eps, 1 - eps)))  # noqa: E731
    expit = lambda z: 1 / (1 + np.exp(-z))  # noqa: E731

    def bias_only(a, b):
        z = logit(s)
        nll = lambda c: -np.mean(y[a] * np.log(expit(z[a] + c) + eps) + (1 - y[a]) * np.log(1 - expit(z[a] + c) + eps))  # noqa: E731
        return expit(z[b] + minimize_scalar(nll, bounds=(-5, 5), method="bounded").x)

    def beta(a, b):  # Kull et al. 2017: logistic regression on ln p and -ln(1 - p)
        x = lambda p: np.c_[np.log(np.clip(p, eps, 1)), -np.log(np.clip(1 - p, eps, 1))]  # noqa: E731
        return LogisticRegression(C=1e6, max_iter=1000).fit(x(s[a]), y[a]).predict_proba(x(s[b]))[:, 1]

    def plain(a, b):  # temperature + bias by plain maximum likelihood, 0/1 targets (the zoo's before Platt's)
        lr = LogisticRegression(C=1e6, max_iter=1000).fit(logit(s[a])[:, None], y[a])
        return lr.predict_proba(logit(s[b])[:, None])[:, 1]

    maps = {"none": lambda a, b: s[b], "bias only": bias_only,
            "temperature + bias, 0/1 targets": plain,
            "temperature + bias (zoo: Platt's targets)": lambda a, b: Calibrator.fit(y[a], s[a])(s[b]), "beta": beta,
            "isotonic": lambda a, b: IsotonicRegression(out_of_bounds="clip", y_min=1e-3, y_max=1 - 1e-3)
            .fit(s[a], y[a]).predict(s[b])}
    rng = np.random.default_rng(0)
    splits = [rng.permutation(len(s)) for _ in range(args.splits)]
    rows = []
    for name, fit in maps.items():
        e, floor, nll = [], [], []
        draw = np.random.default_rng(1)
        for perm in splits:
            a, b = perm[args.test_size:][:args.fit_size], perm[:args.test_size]
            p = np.clip(fit(a, b), eps, 1 - eps)
            e.append(ece(y[b], p))
            floor.append(ece((draw.random(len(p)) < p).astype(float), p))
            nll.append(-np.mean(y[b] * np.log(p) + (1 - y[b]) * np.log(1 - p)))
        e = np.array(e)
        rows.append({"map": name, "mean ECE": e.mean(), "share <= 0.05": (e <= 0.05).mean(),
                     "ECE if perfectly calibrated": np.mean(floor), "log-loss": np.mean(nll)})
    n_fit = len(splits[0][args.test_size:][:args.fit_size])
    print(f"{args.compare_maps}: {len(s)} validation studies; fit on {n_fit}, scored on {args.test_size}, "
          f"{args.splits} random splits\n")
    print(pd.DataFrame(rows).to_markdown(index=False, floatfmt=".3f"))
    return 0


def semi_supervised(args, out: Path) -> int:
    """Round 1 (labelled only) and round 2 (+ pseudo-labels) of each seed, scored on test; the gain per seed."""
    import json

    import numpy as np
    import pandas as pd

    rows = []
    for seed in args.seeds:
        weights = out / f"conf{args.pseudo_confidence}" / f"seed{seed}" / "weights"
        _train(args, seed, weights, "--semi-supervised", "--pseudo-confidence", str(args.pseudo_confidence))
        used = json.loads((weights / args.models[0] / "config.json").read_text())["training"]["semi_supervised"]
        row = {"seed": seed, "pseudo_labelled": used["pseudo_labelled_studies"],
               "pseudo_abnormal_share": used["pseudo_abnormal_share"]}
        for rnd, run in (("round1", weights / "round1"), ("round2", weights)):
            m = _evaluate(args, run, weights.parent / rnd)
            for name in [*args.models, "ensemble"]:
                row[f"{rnd} {name}"] = float(m.loc[name, "auc"])
            row[f"{rnd} ensemble ece"] = float(m.loc["ensemble", "ece"])
            row[f"{rnd} ece if calibrated"] = float(m.loc["ensemble", "ece_if_calibrated"])
            row[f"{rnd} ece p"] = float(m.loc["ensemble", "ece_p"])
        row["gain"] = row["round2 ensemble"] - row["round1 ensemble"]
        rows.append(row)
        print(pd.DataFrame([row]).to_markdown(index=False, floatfmt=".3f"), flush=True)
    table = pd.DataFrame(rows)
    print("\n### test split, per seed\n")
    print(table.to_markdown(index=False, floatfmt=".3f"))
    gains = table["gain"].to_numpy()
    sd = float(np.std(gains, ddof=1)) if len(gains) > 1 else float("nan")
    print(f"\nensemble AUC gain (round 2 - round 1): mean {gains.mean():+.3f}, sd {sd:.3f} over {len(gains)} seed(s); "
          f"per seed {', '.join(f'{g:+.3f}' for g in gains)}")
    table.to_csv(out / f"conf{args.pseudo_confidence}" / "semi_supervised.csv", index=False)
    return 0


if __name__ == "__main__":
    sys.exit(main())
