"""Gradio demo: pick ensemble members, upload the X-rays of one study, see probabilities and Grad-CAM heatmaps.

  python -m demo                      # members under weights/
  python -m demo --hub ORG/NAME       # members downloaded (and cached) from the Hugging Face Hub
  python -m demo --annotations FILE.coco.json   # ground-truth boxes drawn over the CAMs of the images it names

Without --annotations, the synthetic examples' own annotations.coco.json draws their boxes over the CAMs of an upload
that is one of them (byte for byte). The member table shows each member's pointing game and energy share on its
validation images with boxes, as training recorded them (empty for a member whose validation had none).

The command line is demo/cli.py (``python -m demo`` runs it); this module builds the app and never imports it.
"""

from __future__ import annotations

import functools
import os
import warnings
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path

import gradio as gr
import numpy as np
import pandas as pd

from zoo.cam import LABELS, overlay
from zoo.combiners import describe_combiners, list_combiners
from zoo.data import ensure_synthetic, read_label_csv
from zoo.data.io import IMAGE_SUFFIXES
from zoo.ensemble import Calibrated, Ensemble, Group
from zoo.explain import explain_study
from zoo.loader import Member, load_model
from zoo.localisation import (
    FUSED,
    TOLERANCE,
    boxes_by_image,
    describe_localisation,
    load_annotations,
    pad_geometry,
    pointing_hit,
)
from zoo.members import MemberError, resolve_member_dirs
from zoo.metrics import is_abnormal

# What one request may cost (DESIGN "cost is bounded by what the user asked for"):
MAX_FILE_MB = 25  # per upload; Gradio refuses a bigger one while it streams in (launch(max_file_size=...))
MAX_FILES = 8  # per request: a study has 1-4 views
MAX_ENSEMBLES = 8  # fitted ensembles kept (least recently used evicted), one per member set and combiner
MAX_CAM_PIXELS = 64 * 512**2  # per request, files x sum of members' img_size^2: 8 views x 8 members at 512 px
DELETE_CACHE = (600, 900)  # Gradio's upload/result cache (radiographs): every 10 min, delete files older than 15 min
EXAMPLES_DIR = Path("data/synthetic")
BOX_COLOUR = (0, 255, 0)  # the ground-truth outline over the CAM panels
BOX_WIDTH = 2  # px, at the panel's scale
# the member table's localisation columns: the member's Grad-CAM on its abnormal validation images with boxes
# (config.json metrics.val_localisation, written by training; empty for a member whose validation had none)
POINTING_COLUMN = f"val pointing game ({TOLERANCE} px)"
ENERGY_COLUMN = "val energy in boxes"


class AnalysisError(ValueError):
    """Something the user can fix (no image, no member, unreadable file); shown in the UI as a message."""


@dataclass
class MemberPool:
    """Members available to the demo, by name; models are loaded on first use and kept."""

    folders: dict[str, Path]
    precision: str = "auto"  # inference precision of the members (zoo.inference.resolve_precision)
    backend: str = "auto"  # each member's scores: predict.py's default choice (zoo.backends); CAMs always PyTorch
    max_ensembles: int = MAX_ENSEMBLES
    annotations: str | Path | None = None  # a COCO json: its boxes are drawn over the CAMs of the images it names
    # the folder the annotations' images are in, when they are the demo's examples' own (build_demo): an upload
    # matches one only with the example's bytes, so a user's image that merely shares a name gets no boxes
    annotations_root: Path | None = None
    _loaded: dict[str, Member] = field(default_factory=dict)
    _ensembles: OrderedDict[tuple, Ensemble] = field(default_factory=OrderedDict)  # LRU: most recent last

    @functools.cached_property
    def coco(self):
        """The ``annotations`` read once (:func:`zoo.localisation.load_annotations`); None without them, and None
        for the examples' own file where pycocotools (the optional ``[eval]`` extra) is not installed: the examples
        then show no boxes rather than failing every analysis."""
        if not self.annotations:
            return None
        try:
            return load_annotations(self.annotations)
        except ImportError as exc:
            if self.annotations_root is None:  # a file the user gave: the CLI says what to install
                raise
            warnings.warn(f"the examples' boxes are not drawn: {exc}", stacklevel=2)
            return None

    def ground_truth(self, paths: list[str]) -> dict[str, tuple[np.ndarray, int, int]]:
        """``path -> (COCO boxes, stored height, width)`` for each of ``paths`` the annotations name (by base name;
        with :attr:`annotations_root`, only a byte-identical copy of an annotated image, and that image's boxes
        where several share the name): {} without annotations."""
        if self.coco is None:
            return {}
        if self.annotations_root is None:
            return boxes_by_image(self.coco, paths)
        import filecmp

        names: dict[str, list[Path]] = {}
        for img in self.coco.dataset.get("images", []):
            names.setdefault(Path(img["file_name"]).name, []).append(self.annotations_root / img["file_name"])
        copies = {p: next((f for f in names.get(Path(p).name, []) if f.is_file() and filecmp.cmp(p, f, shallow=False)),
                          None) for p in paths}
        copies = {p: f for p, f in copies.items() if f is not None}
        found = boxes_by_image(self.coco, [str(f) for f in copies.values()], self.annotations_root)
        return {p: found[str(f)] for p, f in copies.items() if str(f) in found}

    def use_example_annotations(self, root: Path) -> None:
        """Without annotations of its own, the pool draws the boxes of the example set in ``root`` (its
        annotations.coco.json) over the CAMs of an upload that is one of its images; optional: nothing is drawn
        where pycocotools (the ``[eval]`` extra) is not installed."""
        from zoo.localisation import data_annotations

        if self.annotations or (found := data_annotations(root)) is None:
            return
        try:
            import pycocotools.coco  # noqa: F401
        except ImportError:
            return
        self.annotations, self.annotations_root = found, Path(root)
        self.__dict__.pop("coco", None)  # read again, from the examples' file

    @classmethod
    def from_specs(cls, specs: list[str], precision: str = "auto") -> MemberPool:
        """Members named like ``--models``: folders, run folders, wildcards, ``hf://`` ids (none found: empty)."""
        try:
            dirs = resolve_member_dirs([str(s) for s in specs])
        except MemberError as exc:  # the app still starts, says there are no members, and the console says why
            warnings.warn(f"no members for the demo: {exc}", stacklevel=2)
            dirs = []
        return cls({d.name: d for d in dirs}, precision)

    @classmethod
    def from_source(cls, weights: str | Path = "weights", hub: str | None = None,
                    precision: str = "auto", annotations: str | Path | None = None) -> MemberPool:
        pool = cls.from_specs([f"hf://{hub}" if hub else str(weights)], precision)
        pool.annotations = annotations or None
        return pool

    @functools.cached_property
    def voters(self) -> dict[str, list[str]]:
        """The ensemble's voters: a member, or the fold members of one backbone (:attr:`Member.group`) as one;
        voter -> its member names, in the pool's order. A member whose config cannot be read is left out, said once
        on the console."""
        out: dict[str, list[str]] = {}
        for name, folder in list(self.folders.items()):
            try:
                group = Member(name, folder).group
            except MemberError as exc:
                warnings.warn(f"member left out of the demo: {exc}", stacklevel=2)
                self.folders.pop(name)
                continue
            out.setdefault(group, []).append(name)
        return out

    def choices(self) -> list[tuple[str, str]]:
        """(label, voter) for the members CheckboxGroup: one entry per voter, with its validation AUC (a backbone's
        fold members: the AUC of their out-of-fold predictions)."""
        out = []
        for voter, names in self.voters.items():
            group = Group(voter, [Member(n, self.folders[n]) for n in names])
            auc, kind = group.val_auc, "val AUC" if len(names) == 1 else f"{len(names)} folds, out-of-fold AUC"
            out.append((f"{voter} ({kind} {auc:.3f})" if auc == auc else voter, voter))
        return out

    def members_of(self, chosen: list[str]) -> list[str]:
        """The member names the chosen voters (or member names) stand for, each once, in the pool's order: the same
        member set, however often or in whatever order it is asked for, is the same ensemble."""
        wanted: set[str] = set()
        for c in set(chosen):
            if c in self.voters:
                wanted.update(self.voters[c])
            elif c in self.folders:
                wanted.add(c)
            else:
                raise AnalysisError(f"unknown member {c!r}; available: {', '.join(self.voters) or 'none'}")
        return [n for n in self.folders if n in wanted]

    def member(self, name: str) -> Member:
        if name not in self.folders:
            raise AnalysisError(f"unknown member {name!r}; available: {', '.join(self.folders) or 'none'}")
        if name not in self._loaded:
            try:
                self._loaded[name] = Member(name, self.folders[name], load_model(self.folders[name], "cpu"))
            except MemberError as exc:
                raise AnalysisError(f"Member {name} cannot be used: {exc}") from None
        return self._loaded[name]

    def ensemble(self, names: list[str], combiner: str) -> Ensemble:
        """The ensemble of these members with this combiner, kept: a fitted combiner (``auto``, ``select``) and the
        ensemble calibration and triage (:meth:`Ensemble.calibrate`) learn from the members' validation predictions
        once, not on every request. Keyed on the sorted member set; at most
        ``max_ensembles`` are kept, the least recently used evicted."""
        names = self.members_of(names)
        key = (tuple(sorted(names)), combiner)
        if key in self._ensembles:
            self._ensembles.move_to_end(key)
        else:
            self._ensembles[key] = Ensemble([self.member(m) for m in names], combiner, precision=self.precision,
                                            backend=self.backend)
            while len(self._ensembles) > self.max_ensembles:
                self._ensembles.popitem(last=False)
        return self._ensembles[key]


@dataclass
class Analysis:
    probability: float  # the calibrated ensemble probability of the study: predict.py's CSV score
    threshold: float  # the calibrated ensemble's threshold: predict.py --binary's
    members: pd.DataFrame  # member, val AUC, probability, verdict, val pointing game, val energy in boxes
    panels: list[tuple[np.ndarray, str]]  # (RGB image, caption): originals, member overlays, fused heatmaps
    spread: float  # max - min of member probabilities
    skipped: list[str]  # unreadable uploads
    raw: float = float("nan")  # the combined member probabilities before the ensemble calibration (detail only)
    triage: str = "unavailable"  # normal / abnormal / uncertain at ``triage_rate``, or why it is unavailable
    triage_rate: float | None = None
    triage_note: str = ""  # when these members can decide no study at this rate: what their validation showed
    triage_warning: str = ""  # Calibrated.warning: why the triage guarantees nothing (empty when certified)
    certified: bool = False  # the triage's error rate is guaranteed (fitted on a held-out calibration split)
    ground_truth: str = ""  # for uploads the annotations name: where the boxes come from and the pointing game

    @property
    def verdict(self) -> str:
        """predict.py --binary's label for this study: the same score, threshold and rule."""
        return "ABNORMAL" if is_abnormal(self.probability, self.threshold) else "normal"


def _check_files(files: list[str]) -> list[str]:
    paths = [str(getattr(f, "name", f)) for f in files or [] if f]
    if not paths:
        raise AnalysisError("Upload at least one X-ray (PNG, JPEG, 16-bit PNG or DICOM) of one study.")
    if len(paths) > MAX_FILES:
        raise AnalysisError(f"{len(paths)} files uploaded; the limit is {MAX_FILES} per analysis (one study has 1-4 "
                            "views). Upload the images of one study.")
    for p in paths:
        size_mb = os.path.getsize(p) / 2**20
        if size_mb > MAX_FILE_MB:
            raise AnalysisError(f"{Path(p).name} is {size_mb:.0f} MB; the limit is {MAX_FILE_MB} MB per file.")
    return paths


def draw_boxes(panel: np.ndarray, xyxy: np.ndarray) -> np.ndarray:
    """``panel`` (RGB) with ``[x0, y0, x1, y1]`` boxes (its pixels) outlined in :data:`BOX_COLOUR`, ``BOX_WIDTH`` px
    inward from each box's edge, clipped to the panel."""
    from PIL import Image, ImageDraw

    img = Image.fromarray(np.ascontiguousarray(panel))
    draw = ImageDraw.Draw(img)
    h, w = panel.shape[:2]
    for x0, y0, x1, y1 in np.asarray(xyxy, float).reshape(-1, 4):
        c0, r0 = max(0, round(x0)), max(0, round(y0))
        c1, r1 = min(w, round(x1)) - 1, min(h, round(y1)) - 1  # the last pixel column/row inside the box
        if c1 >= c0 and r1 >= r0:
            draw.rectangle((c0, r0, c1, r1), outline=BOX_COLOUR, width=BOX_WIDTH)
    return np.asarray(img)


def analyse(files: list[str], members: list[str], method: str = "Grad-CAM", pool: MemberPool | None = None,
            combiner: str = "auto", triage: float | None = 0.05) -> Analysis:
    """The whole demo as a pure function: image files of one study + member names + CAM method -> Analysis.

    ``members`` are voters (a member, or a backbone's fold members) or member names; repeats count once.
    Member study probability = mean over the readable images; ensemble = the chosen combiner (zoo.combiners) over
    the voters, then the ensemble calibration: the score and threshold of predict.py (:meth:`Ensemble.calibrate`,
    fitted once per kept ensemble), so the verdict is its ``--binary`` label; fused heatmap = members' CAMs weighted
    by their probabilities (:func:`zoo.cam.fuse_cams`).
    """
    pool = pool or default_pool()
    paths = _check_files(files)
    if not members:
        raise AnalysisError("Pick at least one ensemble member.")
    ens = _bounded_ensemble(pool, list(members), combiner, len(paths))
    ex = explain_study(ens, paths, method)  # one batched CAM pass per member: its maps and its probabilities
    if not ex.readable:
        raise AnalysisError("Could not read any upload as an image: " + "; ".join(
            f"{Path(p).name}: {e.split(': ', 1)[-1]}" for p, e in ex.errors.items()))
    member_probs = ex.member_probs
    study = pd.DataFrame([member_probs.to_dict()])
    study["ensemble"] = ens.combine(study)
    raw = float(study["ensemble"].iloc[0])
    cal, verdict, note = _calibrated_triage(ens, study, triage)
    panels, ground_truth = _panels(ens, ex, paths, pool)
    located = [describe_localisation((m.config.get("metrics") or {}).get("val_localisation")) for m in ens.members]
    rows = pd.DataFrame({
        "member": ens.names,
        "val AUC": [round(m.val_auc, 3) for m in ens.members],
        "probability": [round(float(member_probs[n]), 4) for n in ens.names],
        "verdict": ["abnormal" if is_abnormal(member_probs[m.name], m.threshold) else "normal"
                    for m in ens.members],
        POINTING_COLUMN: [p for p, _ in located],  # empty for a member whose validation images had no boxes
        ENERGY_COLUMN: [e for _, e in located],
    })
    spread = float(member_probs.max() - member_probs.min())
    return Analysis(float(cal.studies["ensemble"].iloc[0]), cal.threshold, rows, panels, spread,
                    [f"{Path(p).name}: {e.split(': ', 1)[-1].replace(p, Path(p).name)}"  # the file's name only,
                     for p, e in ex.errors.items()],  # never the server's temp path
                    raw, verdict, triage, note, cal.warning, cal.certified,
                    ground_truth)


def _bounded_ensemble(pool: MemberPool, members: list[str], combiner: str, n_files: int) -> Ensemble:
    """The pool's ensemble for the chosen members, refused (before any CAM runs) past :data:`MAX_CAM_PIXELS`."""
    try:
        ens = pool.ensemble(members, combiner)
    except KeyError as exc:
        raise AnalysisError(str(exc.args[0])) from None
    pixels = n_files * sum(m.img_size ** 2 for m in ens.members)
    if pixels > MAX_CAM_PIXELS:
        raise AnalysisError(f"{n_files} image(s) x {len(ens.members)} member(s) at their sizes is "
                            f"{pixels / 1e6:.0f} M pixels of Grad-CAM; the limit is {MAX_CAM_PIXELS / 1e6:.0f} M per "
                            "analysis. Pick fewer members or upload fewer images.")
    return ens


def _calibrated_triage(ens: Ensemble, study: pd.DataFrame, triage: float | None) -> tuple[Calibrated, str, str]:
    """What predict.py writes by default: the calibrated study, with the conformal triage verdict at ``triage`` and,
    when these members can decide no study at that rate, why (the ensemble keeps its fit across requests)."""
    try:
        cal = ens.calibrate(study, triage)
    except MemberError:  # members without validation predictions: no triage guarantee to give
        return ens.calibrate(study), "unavailable (members have no val_predictions.csv)", ""
    if cal.triage is None:
        return cal, "not asked", ""
    verdict = str(cal.triage(cal.studies["ensemble"].to_numpy())[0])
    note = f"These members decide no study at this rate: {cal.triage.explain()}." if cal.triage.threshold > 1 else ""
    return cal, verdict, note


def _panels(ens: Ensemble, ex, paths: list[str], pool: MemberPool) -> tuple[list[tuple[np.ndarray, str]], str]:
    """The gallery (per readable image: the original, each member's CAM, the fused CAM; ground-truth boxes drawn
    where the annotations name the upload) and the ground-truth line with the pointing game (empty without)."""
    truth = pool.ground_truth([paths[i] for i in ex.readable])
    panels: list[tuple[np.ndarray, str]] = []
    pointing: list[str] = []
    for j, i in enumerate(ex.readable):
        name, base = Path(paths[i]).name, ex.bases[j]
        gt = truth.get(paths[i])  # (COCO boxes, stored height, width), matched on the upload's base name
        xyxy = None if gt is None else pad_geometry(gt[1], gt[2], base.shape[0]).to_input(gt[0])  # panel pixels

        def cam_panel(cam: np.ndarray, base: np.ndarray = base, xyxy: np.ndarray | None = xyxy) -> np.ndarray:
            panel = overlay(base, cam)
            return panel if xyxy is None else draw_boxes(panel, xyxy)

        panels.append((np.repeat(base[..., None], 3, axis=2), f"{name}: original"))
        for m in ens.members:
            p = float(ex.image_probs.at[j, m.name])
            panels.append((cam_panel(ex.cams[m.name][j]), f"{name}: {m.name} p={p:.2f}"))
        panels.append((cam_panel(ex.fused[j]), f"{name}: ensemble (probability-weighted)"))
        if gt is not None:
            hits = [(n, pointing_hit(c, gt[0], pad_geometry(gt[1], gt[2], c.shape[0])))
                    for n, c in [*((m.name, ex.cams[m.name][j]) for m in ens.members), (FUSED, ex.fused[j])]]
            pointing.append(f"{name}: " + ", ".join(f"{n} {'hit' if h else 'miss'}" for n, h in hits))
    if not pointing:
        return panels, ""
    return panels, (f"**Green boxes: ground truth** from `{Path(pool.annotations).name}` "
                    f"({len(pointing)} of {len(ex.readable)} image(s) annotated). Pointing game (the CAM's "
                    f"maximum within {TOLERANCE} px of a box): " + "; ".join(pointing) + ".")


def summary_markdown(a: Analysis) -> str:
    agree = ("members agree" if a.spread < 0.15 else "members disagree: treat with caution") if len(a.members) > 1 \
        else "single member: no spread"
    lines = [f"## {a.verdict}: P(abnormal) = {a.probability:.3f}",
             f"Calibrated P(abnormal) of the ensemble and its threshold {a.threshold:.3f}: the score `predict.py` "
             f"writes and the verdict of `predict.py --binary`. **Triage** at error rate {a.triage_rate}: "
             f"**{a.triage}** " + ("(conformal: decided only where the error among decided studies is guaranteed "
                                   "on held-out calibration studies)." if a.certified else
                                   f"(not certified: {a.triage_warning or 'no guarantee'}).")
             + (f" {a.triage_note}" if a.triage_note else ""),
             f"Uncalibrated ensemble score {a.raw:.3f}. Spread between members {a.spread:.3f}: {agree}.",
             "_Research tool, not a medical device._"]
    if a.ground_truth:
        lines.insert(-1, a.ground_truth)
    if a.skipped:
        lines.append("**Skipped unreadable uploads:** " + "; ".join(a.skipped))
    return "\n\n".join(lines)


def example_files(n_each: int = 2) -> list[list[str]]:
    """A few normal and abnormal synthetic test images (the synthetic set is generated if missing)."""
    root = ensure_synthetic(EXAMPLES_DIR) if not (EXAMPLES_DIR / "synthetic.json").is_file() else EXAMPLES_DIR
    labels = read_label_csv(root / "test_labels.csv")
    out = []
    for value in (1.0, 0.0):
        ids = labels[labels == value].index[:n_each]
        for i in ids:
            out += [[[str(p)]] for p in sorted((root / "test").glob(f"{i}_image1.*"))]
    return out


class DemoBlocks(gr.Blocks):
    """The demo's Blocks: ``launch()`` refuses an upload over ``MAX_FILE_MB`` while it streams in (Gradio's
    ``max_file_size``), however it is launched (``python -m demo``, ``demo.app.demo.launch()``, a Space)."""

    def launch(self, *args, **kwargs):
        kwargs.setdefault("max_file_size", f"{MAX_FILE_MB}mb")
        return super().launch(*args, **kwargs)


def cache_panels(panels: list[tuple[np.ndarray, str]], cache_dir: str | Path,
                 fmt: str = "png") -> list[tuple[str, str]]:
    """The gallery's panels as image files in Gradio's cache (``CACHE/panels/HASH.FMT``, HASH Gradio's seeded content
    hash, so a panel's address cannot be derived from a radiograph someone holds), each written to a temporary name of
    its own and renamed into place; encoded in threads, as Gradio's gallery encodes them.

    Gradio saves an array by rewriting its content-addressed file in place, so while one user was still downloading a
    panel, another user's identical panel (the same upload) truncated it under them: a torn image ("Too little data
    for declared Content-Length"). A renamed file leaves a reader's open copy whole. The file is written again even
    when there, so Gradio's ``delete_cache`` (which ages its files by ctime) keeps it while it is in use."""
    import tempfile
    from concurrent.futures import ThreadPoolExecutor

    from gradio.processing_utils import encode_pil_to_bytes, hash_bytes
    from PIL import Image

    folder = Path(cache_dir) / "panels"
    folder.mkdir(parents=True, exist_ok=True)

    def save(array: np.ndarray) -> str:
        data = encode_pil_to_bytes(Image.fromarray(array), fmt)
        path = folder / f"{hash_bytes(data)}.{fmt}"
        fd, tmp = tempfile.mkstemp(dir=folder, prefix=f".{path.stem}.", suffix=".tmp")  # a cache: no fsync
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
            os.replace(tmp, path)
        finally:
            Path(tmp).unlink(missing_ok=True)
        return str(path)

    with ThreadPoolExecutor() as workers:
        paths = list(workers.map(save, [array for array, _ in panels]))
    return list(zip(paths, [caption for _, caption in panels], strict=True))


def build_demo(pool: MemberPool, examples: bool = True) -> gr.Blocks:
    choices = pool.choices()

    def run(files, members, method, combiner="auto", triage=0.05):
        try:
            a = analyse(files, members, method, pool, combiner, triage)
            panels = cache_panels(a.panels, gallery.GRADIO_CACHE, gallery.format)
        except AnalysisError as exc:
            raise gr.Error(str(exc)) from None
        except Exception as exc:  # never a stack trace in the UI
            raise gr.Error(f"Analysis failed: {type(exc).__name__}: {exc}") from None
        label = {"abnormal": a.probability, "normal": 1 - a.probability}
        return summary_markdown(a), label, a.members, panels

    with DemoBlocks(title="bone-zoo: X-ray ensemble with Grad-CAM", delete_cache=DELETE_CACHE) as demo:
        gr.Markdown("# bone-zoo\nUpload the radiographs of **one study**, pick ensemble members and a CAM method. "
                    "Each member's probability, the ensemble's verdict and where each member looked.")
        if not choices:
            gr.Markdown("**No members found.** Train some with `python train_all.py` (or start with "
                        "`python -m demo --hub ORG/NAME`).")
        with gr.Row():
            with gr.Column(scale=1):
                files = gr.File(label="X-rays of one study", file_count="multiple", elem_id="upload",
                                file_types=sorted(IMAGE_SUFFIXES))
                members = gr.CheckboxGroup(choices=choices, value=[v for _, v in choices],  # predict.py's default
                                           label="Ensemble members", elem_id="members",
                                           info="a backbone's fold members vote as one")
                method = gr.Radio(list(LABELS), value="Grad-CAM", label="CAM method", elem_id="method")
                rate = gr.Slider(0.01, 0.2, value=0.05, step=0.01, label="Triage error rate", elem_id="triage",
                                 info="decide normal/abnormal only where the error among decided studies is "
                                 "kept below this rate; otherwise uncertain. Guaranteed only for members trained "
                                 "with a calibration split (--calibration-fraction); otherwise the verdict says so")
                combiner = gr.Radio(list_combiners(), value="auto", label="Ensemble method", elem_id="combiner",
                                    info=describe_combiners())
                button = gr.Button("Analyse", variant="primary", elem_id="analyse")
            with gr.Column(scale=2):
                verdict = gr.Markdown(elem_id="verdict")
                label = gr.Label(label="Ensemble", num_top_classes=2, elem_id="ensemble")
                table = gr.Dataframe(label="Members", elem_id="table", interactive=False)
        gallery = gr.Gallery(label="Original, member Grad-CAMs and the fused ensemble heatmap", columns=4,
                             elem_id="heatmaps", height="auto", format="png")
        button.click(run, [files, members, method, combiner, rate], [verdict, label, table, gallery],
                     api_name="analyse",
                     concurrency_limit=1)
        if examples:
            try:
                ex = example_files()
            except OSError:
                ex = []
            if ex:
                gr.Examples(ex, inputs=[files], label="Synthetic examples (2 abnormal, 2 normal)")
                pool.use_example_annotations(EXAMPLES_DIR)  # their boxes over the CAMs of an example
    return demo.queue(max_size=16)


@functools.cache
def default_pool() -> MemberPool:
    """The members named by BONE_ZOO_WEIGHTS (default weights/) or BONE_ZOO_HUB, found on first use; the ground-truth
    boxes of BONE_ZOO_ANNOTATIONS (a COCO json), if set."""
    return MemberPool.from_source(os.environ.get("BONE_ZOO_WEIGHTS", "weights"), os.environ.get("BONE_ZOO_HUB"),
                                  annotations=os.environ.get("BONE_ZOO_ANNOTATIONS"))


def __getattr__(name: str):
    """``demo.app.demo`` (what ``gradio demo/app.py`` and Spaces look for) is built on first access, so importing this
    module scans no folder, downloads nothing and generates no examples."""
    if name == "demo":
        return build_demo(default_pool(), examples=os.environ.get("BONE_ZOO_EXAMPLES", "1") != "0")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
