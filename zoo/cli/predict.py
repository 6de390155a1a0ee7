"""Study-level predictions from an ensemble of zoo members, as a competition CSV (id,label).

  python predict.py --data DIR -output preds.csv                 # every member under weights/
  python predict.py --data DIR --models 'regnet*' --ensemble weighted --tta --evaluate -output preds.csv
  python predict.py --data DIR --models hf://ORG/NAME -output preds.csv
  accelerate launch --multi_gpu --num_processes 4 predict.py --data DIR -output preds.csv   # sharded over 4 GPUs
  python predict.py --data ARCHIVE -output preds.csv --resume    # continue an interrupted run from its chunks

label is the probability that the study is abnormal (mean of its images' probabilities by default).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import os
import shutil
import sys
import traceback
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from zoo import evaluation
from zoo.atomic import write_csv, write_text
from zoo.calibration import plot_reliability, triage_summary
from zoo.combiners import describe_combiners, list_combiners
from zoo.data import LayoutError, load_dataset, report_unreadable
from zoo.ensemble import BACKENDS, Calibrated, Ensemble, MemberError, MemberSource
from zoo.metrics import AGGREGATES, fmt, is_abnormal, metrics_table, plot_roc
from zoo.runtime import PRECISIONS, tune_allocator
from zoo.sharding import DEFAULT_CHUNK_SIZE, PartsError, Processes, parts_dir, predict_chunked, processes


def get_args_parser(add_help: bool = True) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, add_help=add_help,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    a = p.add_argument
    a("--data", required=True, help="dataset folder (competition layout or MURA-v1.1); its test split is predicted")
    a("--output", "-output", dest="output", default="predictions.csv",
      help="CSV to write: id,label per study, sorted by id (default %(default)s). -output works too")
    a("--models", nargs="+", default=None, metavar="SPEC",
      help="members: member folders, run folders, wildcards over backbone names under --weights, or hf://ORG/NAME "
      "(default: every member under --weights)")
    a("--weights", default="weights", help="run folder searched by default and by wildcards (default %(default)s)")
    a("--revision", default=None, help="Hub revision (branch, tag or commit) for hf:// members")
    a("--ensemble", choices=list_combiners(), default="auto", help="how members are combined (fold members of one "
      "backbone are first averaged into one voter), any registered combiner (plugins: entry-point group "
      f"bone_zoo.combiners): {describe_combiners()} (default %(default)s)")
    a("--aggregate", choices=AGGREGATES, default="mean", help="study score from its images (default %(default)s)")
    a("--tta", action="store_true", help="test-time augmentation: average with the horizontal flip")
    a("--binary", action="store_true", help="add a 0/1 column 'abnormal' at --threshold (empty for a study with no "
      "readable image)")
    a("--threshold", type=float, default=None, help="decision threshold for --binary, --triage's labels and the "
      "report, on the scale of the written scores (default: Youden's J on the ensemble's calibrated validation "
      "scores; with --no-calibrate, the combiner's threshold on the raw scores)")
    a("--calibrate", action=argparse.BooleanOptionalAction, default=True, help="apply each member's stored "
      "calibration and an ensemble calibration refitted on the members' validation predictions; --no-calibrate "
      "writes the raw scores (default: %(default)s)")
    a("--triage", type=float, default=None, metavar="ALPHA", help="add a column triage = normal / abnormal / "
      "uncertain, deciding only where the error rate among decided studies is guaranteed <= ALPHA (conformal, "
      "Learn-then-Test on the calibration studies the members were trained with --calibration-fraction to hold "
      "out; without them it runs on the validation studies and says it guarantees nothing), e.g. --triage 0.05")
    a("--missing-value", type=float, default=0.5, help="label written for a study with no readable image "
      "(reported on stderr; default %(default)s)")
    a("--evaluate", action="store_true", help="the test split is labelled (test_labels.csv or MURA valid): write "
      "report.md, metrics.csv and roc.png with AUC, kappa, accuracy, sensitivity, specificity per member, ensemble "
      "and body part")
    a("--report-dir", default=None, help="where report.md and roc.png go (default: the output CSV's folder)")
    a("--cam-dir", default=None, help="also write a Grad-CAM overlay PNG per test image and member into this folder: "
      "DIR/MEMBER/STUDY+IMAGE.png (study id and image stem, percent-encoded, so MURA's image1..N of different "
      "studies never overwrite each other)")
    a("--cam-method", default="gradcam", help="CAM method for --cam-dir (default %(default)s)")
    a("--batch-size", type=int, default=0, help="inference batch size; 0 = auto: 4 on CPU (fastest there), 32 on GPU "
      "(default %(default)s)")
    a("--backend", choices=BACKENDS, default="auto", help="auto: per member, its fastest fresh exported graph (int8 "
      "if it passed its accuracy check at export on the runtime that runs it, else fp32; on OpenVINO where installed, "
      "else ONNX Runtime), "
      "PyTorch where it has none, where it is stale or with --cam-dir; one line per member says which. Or force one: "
      "torch, onnx, onnx-int8 (ONNX Runtime), openvino, openvino-int8 (default %(default)s)")
    a("--precision", choices=PRECISIONS, default="auto", help="auto: bf16 where the CPU (AVX512-BF16/AMX) or GPU "
      "computes it natively, else fp32 on CPU / fp16 on older GPUs (default %(default)s)")
    a("--device", default="auto", help="cuda, cpu, mps or auto (default %(default)s)")
    a("--workers", type=int, default=-1, help="DataLoader workers, -1 = auto (default %(default)s)")
    a("--cache-dir", default=None, help="decoded-image cache (default ~/.cache/bone-zoo/images; '' = in memory)")
    a("--cache-max-gb", type=float, default=None, help="bound of the decoded-image cache on disk, least recently "
      "used entries evicted (default: BONE_ZOO_CACHE_MAX_GB or 20)")
    a("--chunk-size", type=_chunk_size, default=DEFAULT_CHUNK_SIZE, help="images decoded and scored at a time: "
      "memory is bounded by one chunk, whatever the size of the archive. Each finished chunk is written atomically "
      "to OUTPUT.parts/ (removed once the CSV is written), so an interrupted run loses at most the chunk in flight "
      "and --resume continues it. Under accelerate launch / torchrun the chunks are shared out over the processes "
      "(chunk i to process i mod N) and gathered by the main process, which alone writes the CSV, report and CAMs "
      "(default %(default)s)")
    a("--resume", action="store_true", help="continue the interrupted prediction whose finished chunks are in "
      "OUTPUT.parts/: only the missing chunks are scored, and the CSV is the one an uninterrupted run writes. It must "
      "be the same prediction (members' weights, backends and graph files, test images, --tta, --precision, "
      "--chunk-size, --batch-size on a GPU, bone-zoo's and the runtimes' versions), else it is refused with what "
      "differs. Without --resume an existing OUTPUT.parts/ is refused, "
      "never silently reused")
    a("--quiet", action="store_true", help="no progress bars")
    evaluation.add_evaluation_args(p)  # --strata, --annotations, --loc-methods, --road-samples, --pointing-tolerance
    return p


def _chunk_size(text: str) -> int:
    try:
        n = int(text)
    except ValueError:
        n = 0
    if n < 1:
        raise argparse.ArgumentTypeError(f"must be a whole number of images >= 1, not {text!r}")
    return n


class UsageError(Exception):
    """Something the user must fix, found before anything is written: :func:`main` prints it as one ``error:`` line
    and returns 2."""


@dataclass
class Plan:
    """What a run predicts, read and checked before any image is: the dataset, the ensemble and the evaluation
    inputs (``--strata``, ``--annotations``)."""

    dataset: object  # zoo.data.load_dataset's: ``test`` images, ``root``, ``name``, ``notes``
    ensemble: Ensemble
    strata: pd.DataFrame | None = None
    coco: object | None = None


@dataclass
class Prediction:
    """One run's answer: the study table whose ``ensemble`` column is the score the CSV gets (calibrated unless
    --no-calibrate; then ``ensemble_raw`` is absent), the decision threshold on that scale, the calibration (None
    with --no-calibrate) and the triage verdict per study (with --triage)."""

    studies: pd.DataFrame
    ensemble: Ensemble
    threshold: float
    calibrated: Calibrated | None = None
    triage: pd.Series | None = None

    @property
    def thresholds(self) -> dict[str, float]:
        """The threshold of every column the report scores: members and fold groups as the ensemble computed them
        (on the calibrated scale when calibrated), the ensemble's, and the raw ensemble's (the combiner's)."""
        members = (self.calibrated.member_thresholds if self.calibrated is not None
                   else self.ensemble.member_thresholds())
        return members | {"ensemble": self.threshold, "ensemble_raw": self.ensemble.threshold}


def write_report(pred: Prediction, out_dir: Path, title: str, strata: pd.DataFrame | None = None,
                 extra_lines: list[str] | None = None) -> pd.DataFrame:
    """report.md, metrics.csv, roc.png and reliability.png from the prediction whose 'ensemble' column is what went
    into the CSV; a triage section with --triage."""
    ens, studies = pred.ensemble, pred.studies
    labelled = studies[studies["label"].notna()]
    bags = [g.name for g in ens.groups if len(g.members) > 1]  # a backbone's fold members averaged
    cols = ens.names + bags + ["ensemble"] + (["ensemble_raw"] if "ensemble_raw" in studies else [])
    table = metrics_table(labelled, cols, pred.thresholds)
    show = table.copy()
    for c in ("threshold", "auc", "kappa", "accuracy", "sensitivity", "specificity", "ece", "ece_if_calibrated",
              "ece_p", "brier"):
        show[c] = show[c].map(fmt)
    show = evaluation.interval_columns(table, show)  # 95% intervals appended beside the point estimates
    overall = show[show["part"] == "ALL"].drop(columns="part")
    per_part = show[show["part"] != "ALL"]
    lines = [
        f"# Evaluation: {title}", "", _summary(pred, labelled, bags), "",
        "## Overall", "", overall.to_markdown(index=False, disable_numparse=True), "",
        f"`ece_if_calibrated`: the mean ECE a perfectly calibrated model with the same scores would show on these "
        f"{len(labelled)} studies (labels redrawn from the scores, 2000 times); `ece_p`: the share of those draws at "
        "least as far off as the observed ECE. A small `ece_p` (< 0.05) is evidence of miscalibration; otherwise the "
        "ECE is within what chance gives on this many studies.", "",
        "## Per body part", "", per_part.to_markdown(index=False, disable_numparse=True), "",
        "![ROC](roc.png) ![Reliability](reliability.png)", "",
    ]
    lines += evaluation.research_sections(labelled, ens.names + bags, out_dir, strata) + (extra_lines or [])
    if pred.triage is not None:
        lines += _triage_lines(labelled, pred.triage.loc[labelled.index], pred.calibrated.triage)
    write_text(out_dir / "report.md", "\n".join(lines))
    write_csv(table, out_dir / "metrics.csv")
    plot_reliability({c: (labelled["label"].to_numpy(), labelled[c].to_numpy()) for c in cols},
                     out_dir / "reliability.png", title=f"Reliability, study level: {title}")
    curves = {c: (labelled["label"].to_numpy(), labelled[c].to_numpy()) for c in ens.names + bags}
    curves[f"ensemble ({ens.method})"] = (labelled["label"].to_numpy(), labelled["ensemble"].to_numpy())
    plot_roc(curves, out_dir / "roc.png", title=f"ROC, study level: {title}")
    return table


def _summary(pred: Prediction, labelled: pd.DataFrame, bags: list[str]) -> str:
    """The report's opening paragraph: what was scored, by which ensemble, on which scale."""
    ens, calibrated = pred.ensemble, pred.calibrated
    return (
        f"{len(labelled)} labelled studies ({int(labelled['label'].sum())} abnormal). Ensemble: {_method(ens)} of "
        f"{len(ens.members)} member(s)" + (f" in {len(ens.groups)} group(s) (fold members averaged)"
                                           if bags else "") + "; study score = aggregate of image probabilities. "
        "Members use their stored thresholds; the ensemble row is computed from the same scores as the CSV. "
        + ("Scores are calibrated (each member's stored calibration; the ensemble's refitted on "
           + (f"{calibrated.n_calibration} held-out calibration studies" if calibrated.n_calibration else
              f"{calibrated.n_validation} validation studies") + "); `ensemble_raw` is the uncalibrated ensemble."
           if calibrated else "Scores are raw (--no-calibrate)."))


def _method(ens: Ensemble) -> str:
    """The combiner, and for ``auto`` what it chose on the validation predictions and why."""
    c = ens.combiner
    if getattr(c, "scores", None):
        scores = ", ".join(f"{k} {v:.3f}" for k, v in c.scores.items())
        return f"auto -> **{c.chosen.name}** (cross-validated AUC on the validation predictions: {scores})"
    return ens.method


def _triage_lines(labelled: pd.DataFrame, verdicts: pd.Series, tri) -> list[str]:
    rows = [{"part": "ALL", **triage_summary(labelled["label"].to_numpy(), verdicts.to_numpy())}]
    for part, df in labelled.groupby("part", sort=True):
        rows.append({"part": part, **triage_summary(df["label"].to_numpy(), verdicts.loc[df.index].to_numpy())})
    table = pd.DataFrame(rows)
    for c in ("share_decided", "error_among_decided"):
        table[c] = table[c].map(fmt)
    return ["## Triage", ""] + ([f"**{tri.warning()}.**", ""] if not tri.certified else []) + [
            f"Target error rate among decided studies: {tri.alpha} (Learn-then-Test on {tri.n} {tri.source} "
            f"studies, " + (f"guarantee with probability {1 - tri.delta:.2f}" if tri.certified else "NOT certified")
            + f"); labels at the decision threshold {tri.decision_threshold:.3f} (--binary's), a study decided when "
            f"{tri.confidence} >= {tri.threshold:.2f}" + (" (none could be guaranteed: every study is uncertain)"
                                                        if tri.threshold > 1 else "") + f"; {tri.explain()}.", "",
            table.to_markdown(index=False, disable_numparse=True), ""]


def plan(args: argparse.Namespace) -> Plan:
    """Read the dataset, the evaluation inputs and the members, fit the calibration; raise :class:`UsageError` on
    what the user must fix."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            dataset = load_dataset(args.data)
    except LayoutError as exc:
        raise UsageError(str(exc)) from None
    for note in dataset.notes:  # what was skipped or assumed in the folder, said once
        print(f"note: {note}", file=sys.stderr)
    test = dataset.test
    if test.empty:
        raise UsageError(f"{args.data}: no test images (expected images in {Path(args.data) / 'test'}/ or MURA's "
                         "valid split)")
    if args.evaluate and test["label"].notna().sum() == 0:
        raise UsageError(f"--evaluate needs labels for the test split ({Path(args.data) / 'test_labels.csv'} with "
                         "id,label, or MURA's valid_labeled_studies.csv); none found")
    try:
        strata, coco = evaluation.load_evaluation_inputs(args)
    except (ValueError, OSError, ImportError) as exc:
        raise UsageError(str(exc)) from None
    try:
        ens = Ensemble.from_paths(args.models or [args.weights], method=args.ensemble, device=args.device,
                                  precision=args.precision, backend=args.backend,
                                  source=MemberSource(args.weights, args.revision), cams=bool(args.cam_dir))
    except (MemberError, OSError, ImportError) as exc:
        raise UsageError(str(exc)) from None
    for m in ens.members:  # which backend each member runs on, and why
        print(ens.choice(m).line(m.name), file=sys.stderr)
    if not args.calibrate and args.triage is not None:  # what the user must fix, found before any image is scored
        raise UsageError("--triage works on calibrated scores; drop --no-calibrate")
    if args.calibrate:
        try:
            ens.fit_calibration(args.triage, args.threshold, tta=args.tta)  # kept for run()'s calibrate()
        except MemberError as exc:
            raise UsageError(str(exc)) from None
    if not args.quiet:
        print(f"{dataset.root}: {len(test)} test images, {test['id'].nunique()} studies; ensemble ({args.ensemble}) "
              f"of {len(ens.members)}: {', '.join(ens.names)}", file=sys.stderr)
    return Plan(dataset, ens, strata, coco)


def run(args: argparse.Namespace, plan: Plan, procs: Processes | None = None) -> Prediction | None:
    """Score the test studies, calibrated unless --no-calibrate, with the triage when asked for: chunk by chunk into
    OUTPUT.parts/, shared out over ``procs`` (:mod:`zoo.sharding`). None on a process other than the main one (its
    chunks were gathered by the main process)."""
    ens = plan.ensemble
    try:
        got = predict_chunked(ens, plan.dataset.test, parts_dir(args.output), procs or Processes(),
                              chunk_size=args.chunk_size, resume=args.resume, tta=args.tta, quiet=args.quiet,
                              note=lambda line: print(f"note: {line}", file=sys.stderr), batch_size=args.batch_size,
                              workers=args.workers, cache_dir=args.cache_dir, max_gb=args.cache_max_gb)
    except PartsError as exc:
        raise UsageError(str(exc)) from None
    if got is None:
        return None
    st = ens.studies(*got, aggregate=args.aggregate)
    report_unreadable(st.attrs["errors"])
    missing = st["ensemble"].isna()
    if missing.any():
        print(f"warning: {int(missing.sum())} study(ies) have no readable image; written with label "
              f"{args.missing_value}" + (" and no --binary verdict" if args.binary else "")
              + f": {', '.join(st.loc[missing, 'id'].head(10))}", file=sys.stderr)
    if not args.calibrate:
        return Prediction(st, ens, args.threshold if args.threshold is not None else ens.threshold)
    calibrated = ens.calibrate(st, args.triage, threshold=args.threshold, tta=args.tta)  # fitted above
    if calibrated.warning:
        print(f"warning: {calibrated.warning}", file=sys.stderr)
    st = calibrated.studies  # a copy of the table, attrs (errors, image predictions) included
    triage = None
    if calibrated.triage is not None:
        triage = pd.Series(calibrated.triage(st["ensemble"].to_numpy()), index=st.index)
    return Prediction(st, ens, calibrated.threshold, calibrated, triage)


def submission(args: argparse.Namespace, pred: Prediction) -> pd.DataFrame:
    """The CSV: ``id, label`` (--missing-value where a study has no readable image), ``abnormal`` with --binary,
    ``triage`` with --triage."""
    st = pred.studies
    sub = pd.DataFrame({"id": st["id"], "label": st["ensemble"].fillna(args.missing_value)})
    if args.binary:  # the demo's headline rule, on the score itself: --missing-value is no evidence (empty)
        score = st["ensemble"].to_numpy(dtype=float)
        sub["abnormal"] = pd.array(is_abnormal(score, pred.threshold).astype(int), dtype="Int64")
        sub.loc[np.isnan(score), "abnormal"] = pd.NA
    if pred.triage is not None:
        sub["triage"] = pred.triage.to_numpy()
    return sub


def report(args: argparse.Namespace, plan: Plan, pred: Prediction, sub: pd.DataFrame, out: Path) -> None:
    """--cam-dir's overlays and --evaluate's report, from the prediction and the CSV just written (``sub``)."""
    images = pred.studies.attrs["image_predictions"]
    if args.cam_dir:
        from zoo.explain import write_cams

        n = write_cams(pred.ensemble, images, args.cam_dir, method=args.cam_method, cache_dir=args.cache_dir,
                       quiet=args.quiet, max_gb=args.cache_max_gb, chunk_size=args.chunk_size)
        print(f"wrote {n} CAM overlays to {args.cam_dir}", file=sys.stderr)
    if not args.evaluate:
        return
    scored = dataclasses.replace(pred, studies=pred.studies.assign(ensemble=sub["label"].to_numpy()))  # the CSV's
    report_dir = Path(args.report_dir) if args.report_dir else out.parent
    extra = [] if plan.coco is None else evaluation.localisation_report(
        pred.ensemble, images, plan.coco, plan.dataset.root, report_dir, args)
    table = write_report(scored, report_dir, plan.dataset.name, plan.strata, extra)
    overall = table[table["part"] == "ALL"][["model", "auc", "kappa", "accuracy", "sensitivity", "specificity",
                                             "ece", "ece_p", "brier", "auc_lo", "auc_hi"]]
    print(overall.to_markdown(index=False, floatfmt=".3f"))
    print(f"wrote {report_dir / 'report.md'}, roc.png and reliability.png", file=sys.stderr)


def main(args: argparse.Namespace) -> int:
    """plan (read and check everything), run (score the studies), write the CSV, then report (overlays, report.md).

    Under ``accelerate launch`` / ``torchrun`` every process plans and scores its share of the chunks; the main
    process alone prints, writes the CSV and reports (the others run silenced: no line is printed twice), except
    that a process's own ``error:`` line is always printed (prefixed ``[rank K]``). After planning the processes
    agree: where any of them failed, every one returns 2 and the main process prints why."""
    tune_allocator()
    procs, args.device = processes(args.device)
    err = sys.stderr  # before silencing: where a process other than the main one still says why it fails
    try:
        with _silenced(not procs.is_main):
            return _main(args, procs, err)
    finally:
        procs.close()


def _main(args: argparse.Namespace, procs: Processes, err=None) -> int:
    err = err or sys.stderr
    p = problem = None
    try:
        p = plan(args)
    except UsageError as exc:
        problem = str(exc)
        if not procs.is_main:
            print(f"[rank {procs.rank}] error: {problem}", file=err, flush=True)
    except Exception as exc:  # noqa: BLE001 -- sharded: said, then agreed on, never a process left waiting
        if procs.world == 1:
            raise
        traceback.print_exc(file=err)
        problem = f"{type(exc).__name__}: {exc}"
    problem = procs.agree(problem)  # collective: no process goes on to score (and waits) while another one stopped
    if problem is not None:
        if procs.is_main:
            print(f"error: {problem}", file=sys.stderr)
        return 2
    def written(wrote: bool) -> None:  # every process: the main one says whether the CSV is written
        if procs.world > 1 and procs.broadcast(wrote) and not procs.is_main:
            shutil.rmtree(parts_dir(args.output), ignore_errors=True)  # this node's chunks (no shared file system)

    try:
        pred = run(args, p, procs)
        if pred is not None:  # the main process (the others' shares were gathered onto it)
            sub = submission(args, pred)
            out = write_csv(sub, args.output, float_format="%.6f")
            shutil.rmtree(parts_dir(args.output), ignore_errors=True)  # the CSV holds it all now
    except UsageError as exc:  # raised on every process together (zoo.sharding's collective checks)
        if procs.is_main:
            print(f"error: {exc}", file=sys.stderr)
        written(False)
        return 2
    except Exception:  # on the main process after the gathers (the others wait in the broadcast): not written
        written(False)
        raise  # (an interrupt is not caught: the process stops, and its launcher stops the others)
    written(pred is not None)
    if pred is None:
        return 0
    print(f"wrote {out} ({len(sub)} studies)", file=sys.stderr)
    report(args, p, pred, sub, out)
    return 0


@contextlib.contextmanager
def _silenced(silent: bool):
    """Nothing printed (stdout, stderr, warnings, progress bars) when ``silent``: a process other than the main one
    says nothing the main one does not already say. An uncaught error still prints its traceback."""
    if not silent:
        yield
        return
    with open(os.devnull, "w") as null, contextlib.redirect_stdout(null), contextlib.redirect_stderr(null), \
            warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield


if __name__ == "__main__":
    sys.exit(main(get_args_parser().parse_args()))
