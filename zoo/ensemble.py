"""Ensembles of zoo members: load them from folders, run folders, wildcards or Hub ids; predict images and studies.

PyTorch is imported only by the torch backend, so a member on its exported graphs (``--backend auto`` where they
are fresh, ``onnx``, ``onnx-int8``, ``openvino``) runs without it; :mod:`zoo.backends` chooses per member.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from zoo.backends import BACKENDS, GRAPH_BATCH, Choice, choose
from zoo.combiners import create_combiner
from zoo.data import ImageArray, load_images
from zoo.graph_scores import Stored, stored
from zoo.loader import Member
from zoo.members import MemberError, resolve_member_dirs, unique_names
from zoo.metrics import aggregate_studies, best_threshold

__all__ = ["BACKENDS", "Ensemble", "Member", "MemberError", "MemberSource", "resolve_member_dirs"]


@dataclass(frozen=True)
class MemberSource:
    """Where member specs are looked up (:func:`zoo.members.resolve_member_dirs`): the default run folder and
    wildcards under ``weights_dir``, ``hf://`` ids at ``revision``, downloaded into ``cache_dir`` (None: the Hub's)."""

    weights_dir: str | Path = "weights"
    revision: str | None = None
    cache_dir: str | None = None


def training_predictions(m: Member, split: str) -> pd.DataFrame | None:
    """A member's stored study predictions of its ``val`` or ``calibration`` split by the torch path, as training
    wrote them (val_predictions.csv, calibration_predictions.csv); None where it has none."""
    return m.val_predictions() if split == "val" else _read_predictions(m.folder / CALIBRATION_FILE)


@dataclass
class Group:
    """What the combiner sees as one voter: a member, or the k fold members of one backbone (``--folds``), whose
    study score is the mean of theirs and whose validation predictions are their out-of-fold predictions.
    ``predictions(member, split)`` reads a member's stored study scores of a split (``val``, ``calibration``): the
    torch path's by default, the scores of the backend it runs on in an ensemble (:meth:`Ensemble.predictions`)."""

    name: str
    members: list[Member]
    predictions: Callable[[Member, str], pd.DataFrame | None] = training_predictions
    _val: dict[bool, pd.DataFrame | None] = field(default_factory=dict, repr=False)
    _cal: dict[bool, pd.DataFrame | None] = field(default_factory=dict, repr=False)

    def val_predictions(self, calibrated: bool = False) -> pd.DataFrame | None:
        """``id, label, prob`` over the members' validation studies (each member's calibration applied if asked);
        None when a member has none. Read once per group (fitting the combiner, calibrating and the OOF AUC all
        use it)."""
        if calibrated not in self._val:
            self._val[calibrated] = self._read(calibrated, "val")
        return self._val[calibrated]

    def calibration_predictions(self, calibrated: bool = True) -> pd.DataFrame | None:
        """``id, label, prob`` over the calibration split the members were trained without (each member's
        ``calibration_predictions.csv``; fold members: the mean of their scores); None when a member has none."""
        if calibrated not in self._cal:
            self._cal[calibrated] = self._read(calibrated, "calibration")
        return self._cal[calibrated]

    def _read(self, calibrated: bool, split: str) -> pd.DataFrame | None:
        frames = []
        for m in self.members:
            f = self.predictions(m, split)
            if f is None:
                return None
            if calibrated:
                f = f.assign(prob=m.calibrator(f["prob"].to_numpy(dtype=float)))
            frames.append(f[["id", "label", "prob"]])
        df = pd.concat(frames, ignore_index=True)
        return _content_order(df.groupby("id", sort=True).agg({"label": "first", "prob": "mean"}).reset_index())

    @functools.cached_property
    def val_auc(self) -> float:
        """The member's validation AUC; for fold members, the AUC of their out-of-fold predictions."""
        if len(self.members) == 1:
            return self.members[0].val_auc
        from zoo.metrics import binary_metrics

        v = self.val_predictions(calibrated=True)  # fold models' scores put on one scale before pooling
        return float("nan") if v is None else binary_metrics(v["label"].to_numpy(), v["prob"].to_numpy())["auc"]

    @property
    def threshold(self) -> float:
        return float(np.mean([m.threshold for m in self.members]))


def _content_order(df: pd.DataFrame) -> pd.DataFrame:
    """Validation rows in an order that does not depend on how studies are named (real ids or the salted pseudonyms
    a push writes): by label, then the scores; the id breaks only ties between rows of equal content, whose order no
    fit can tell apart. The combiners, calibrations and triage fitted on them are the same either way."""
    keys = ["label", *[c for c in df.columns if c not in ("id", "label")], "id"]
    return df.sort_values(keys, kind="stable", ignore_index=True)


def _read_predictions(path: Path) -> pd.DataFrame | None:
    return pd.read_csv(path, dtype={"id": str}) if path.is_file() else None


CALIBRATION_FILE = "calibration_predictions.csv"  # written by training with --calibration-fraction


@dataclass
class CalibrationFit:
    """What :meth:`Ensemble.calibrate` fits on the members' validation (or held-out calibration) studies. It does not
    depend on the studies it is applied to, so an ensemble fits it once per (triage, threshold, split) and keeps it."""

    threshold: float  # the one given, else Youden's J on the calibrated validation scores (without them: calibrated
    # member thresholds); the triage's labels use it too
    calibrator: object  # the ensemble's zoo.calibration.Calibrator
    triage: object | None  # zoo.calibration.Triage, when asked for
    n_validation: int  # validation studies (the combiner's fit and the threshold; 0: none)
    n_calibration: int  # held-out calibration studies the ensemble calibration and triage were fitted on
    member_thresholds: dict[str, float]  # each member's and fold group's threshold on the calibrated scale
    # (:meth:`Ensemble.member_thresholds`): what the report's member rows use

    @property
    def certified(self) -> bool:
        """The triage's guarantee holds: fitted on calibration studies untouched by selection."""
        return self.triage is not None and self.triage.certified

    @property
    def warning(self) -> str:
        """What a user must be told about the triage (empty when certified or not asked for)."""
        return self.triage.warning() if self.triage is not None else ""


@dataclass
class Calibrated(CalibrationFit):
    """Output of :meth:`Ensemble.calibrate`: the fit and the studies it was applied to."""

    studies: pd.DataFrame  # member columns and ``ensemble`` calibrated; ``ensemble_raw`` as combined before


class Ensemble:
    """Members that vote on each study. Each member keeps its own preprocessing (image size, normalisation)."""

    def __init__(self, members: list[Member], method: str = "mean", precision: str = "auto", backend: str = "torch",
                 cams: bool = False):
        if not members:
            raise MemberError("an ensemble needs at least one member")
        self.members = members
        groups: dict[str, list[Member]] = {}
        for m in members:
            groups.setdefault(m.group, []).append(m)
        if backend not in BACKENDS:
            raise ValueError(f"backend must be one of {BACKENDS}, not {backend!r}")
        self.backend = backend  # asked for; per member, self.choice(m) says what runs (zoo.backends)
        self.cams = cams  # CAMs will be asked for: auto keeps those members on PyTorch
        self._choices: dict[str, Choice] = {}  # member name -> its backend, chosen on first use
        self._stored: dict[str, Stored] = {}  # member name -> its backend's fresh stored scores, read on first use
        # the combiner's voters, fitted on the scores of the backend each member runs on
        self.groups = [Group(name, ms, self.predictions) for name, ms in groups.items()]
        self._fits: dict[tuple, CalibrationFit] = {}  # calibrate()'s fits, per (triage, threshold, split, tta)
        self.use_combiner(method)
        self.precision = precision  # fp32, bf16, fp16 or auto (zoo.inference.resolve_precision)

    @classmethod
    def from_paths(cls, specs: Iterable[str], method: str = "mean", *, device: str = "cpu", precision: str = "auto",
                   backend: str = "torch", source: MemberSource | None = None, cams: bool = False) -> Ensemble:
        """Members named by ``specs`` (folders, run folders, wildcards, ``hf://`` ids; resolved as ``source`` says),
        checked now: a member whose weights do not match its config, or whose forced graph backend is missing or
        stale, fails here with what to do. Each member's backend is :func:`zoo.backends.choose`'s (``cams``: CAMs
        will be asked for, so ``auto`` keeps members on PyTorch)."""
        source = source or MemberSource()
        folders = resolve_member_dirs(specs, source.weights_dir, source.revision, source.cache_dir)
        members = [Member(name, folder, device=device) for name, folder in zip(unique_names(folders), folders)]
        ens = cls(members, method, precision, backend, cams)
        for m in members:  # fail now: a forced graph missing or stale (with the export command), or torch weights
            if ens.choice(m).runner is None:  # that do not match their config
                m.model  # noqa: B018
        return ens

    def choice(self, m: Member) -> Choice:
        """The backend member ``m`` runs on (:func:`zoo.backends.choose`), chosen once."""
        if m.name not in self._choices:
            self._choices[m.name] = choose(m.folder, self.backend, self.cams)
        return self._choices[m.name]

    def stored_scores(self, m: Member) -> Stored:
        """The scores member ``m``'s backend gave its validation and calibration studies at export, where they are
        what it gives now (:func:`zoo.graph_scores.stored`; none for torch, whose are training's files)."""
        if m.name not in self._stored:
            c = self.choice(m)
            self._stored[m.name] = stored(m.folder, c.backend, c.runner)
        return self._stored[m.name]

    def predictions(self, m: Member, split: str) -> pd.DataFrame | None:
        """Member ``m``'s stored study scores of ``split`` (``val``, ``calibration``) that its calibration, the
        combiner and the triage are fitted on: those of the backend it runs on where they are fresh
        (:meth:`stored_scores`), else the torch path's of training (:func:`training_predictions`)."""
        own = self.stored_scores(m).frames.get(split)
        return own if own is not None else training_predictions(m, split)

    def uncertified_backends(self) -> str:
        """Why a triage fitted on the members' calibration scores is not certified on the scores these members'
        backends give; "" when it is. A member whose backend's own calibration scores were fitted on keeps it; one
        fitted on the torch path's (calibration_predictions.csv) keeps it only within the drift rule
        (:meth:`zoo.backends.Choice.uncertified`)."""
        out = []
        for m in self.members:
            own = self.stored_scores(m)
            if "calibration" in own.frames or not (w := self.choice(m).uncertified(m.name)):
                continue
            out.append(f"{w} (its own {self.choice(m).backend} scores were not used: {own.why})" if own.why else w)
        return "; ".join(out)

    @property
    def names(self) -> list[str]:
        return [m.name for m in self.members]

    @property
    def device(self):
        from zoo.inference import resolve_device

        return resolve_device(self.members[0].device)

    @property
    def method(self) -> str:
        """The combiner's registered name (read-only: :meth:`use_combiner` changes it)."""
        return self._combiner.name

    @property
    def combiner(self):
        """The combiner (zoo.combiners) built, and fitted where it learns, for these groups."""
        return self._combiner

    def use_combiner(self, name: str) -> None:
        """Combine the groups with the registered combiner ``name`` from now on (mutates this ensemble): it is built
        for these groups and, where it learns (weights, a reference distribution, a choice), fitted on their
        calibrated validation predictions."""
        combiner = create_combiner(name, self.groups)
        if combiner.fitted:  # learns from the validation (out-of-fold) predictions, never from test studies
            val = self.validation_studies(calibrated=True)  # the scale calibrate() combines them on
            if val is not None:
                combiner.fit(val[self.group_names].to_numpy(dtype=float), val["label"].to_numpy(dtype=int))
            elif combiner.reference:
                raise MemberError(f"--ensemble {name} scores each study against the members' validation score "
                                  "distributions (val_predictions.csv, written by training and pushed with the "
                                  "member); these members share none. Use --ensemble mean or weighted")
        self._combiner = combiner
        self._fits.clear()  # calibrations were fitted on the previous combiner's scores

    @property
    def group_names(self) -> list[str]:
        return [g.name for g in self.groups]

    def weights(self) -> np.ndarray:
        """The combiner's weights, one per group (a member, or one backbone's fold members), normalised to sum 1."""
        w = self.combiner.weights()
        return w / w.sum()

    def with_groups(self, scores: pd.DataFrame) -> pd.DataFrame:
        """``scores`` with a column per fold group (the mean of its members' columns) where it has none (validation
        tables hold group columns only)."""
        out = scores.copy()
        for g in self.groups:
            if g.name not in out.columns:
                out[g.name] = out[[m.name for m in g.members]].mean(axis=1)
        return out

    def combine(self, scores: pd.DataFrame, calibrated: bool = False) -> pd.Series:
        """Ensemble score per row from the member columns of ``scores`` (NaN-aware): fold members averaged into
        their group, then the chosen combiner over the groups. Each row is scored on its own.

        A combiner with a reference distribution (``rank``) was fitted on the members' calibrated validation scores
        and is given calibrated member scores: raw ones (``calibrated=False``) are calibrated first; say
        ``calibrated=True`` when the columns already are (:meth:`calibrate`, ``validation_studies(calibrated=True)``).
        """
        if self.combiner.reference and not calibrated:
            scores = self._calibrated(scores)
        groups = self.with_groups(scores)[self.group_names].to_numpy(dtype=float)
        return pd.Series(self.combiner.combine(groups), index=scores.index, name="ensemble")

    @property
    def threshold(self) -> float:
        """The decision threshold of the ensemble on the raw scores (the combiner's)."""
        return self.combiner.threshold()

    def member_thresholds(self, calibrated: bool = False) -> dict[str, float]:
        """Each member's stored threshold (``calibrated``: mapped by its own calibration onto the calibrated scale)
        and each fold group's, the mean of its members', by column name."""
        thr = {m.name: float(m.calibrator(np.array([m.threshold]))[0]) if calibrated else m.threshold
               for m in self.members}
        return thr | {g.name: float(np.mean([thr[m.name] for m in g.members])) for g in self.groups
                      if len(g.members) > 1}

    def _calibrated(self, scores: pd.DataFrame) -> pd.DataFrame:
        """``scores`` with each member's calibration applied to its column and fold groups recomputed as the mean of
        their calibrated members."""
        out = scores.copy()
        for m in self.members:
            out[m.name] = m.calibrator(out[m.name].to_numpy(dtype=float))
        out = out.drop(columns=[g.name for g in self.groups if len(g.members) > 1], errors="ignore")
        return self.with_groups(out)

    def validation_studies(self, calibrated: bool = False) -> pd.DataFrame | None:
        """The validation predictions of every group on the studies they all have: ``id, label`` and one column per
        group (a member's own validation split, or a backbone's out-of-fold predictions; with ``calibrated``, each
        member's calibration applied first); None when a member has no val_predictions.csv or they share no study."""
        frames = [g.val_predictions(calibrated) for g in self.groups]
        return self._shared_studies(frames)

    def calibration_studies(self) -> pd.DataFrame | None:
        """The calibration split as :meth:`validation_studies` (calibrated members): ``id, label`` and one column per
        group, on the studies every member was trained without and selected without; None when a member has no
        ``calibration_predictions.csv`` (trained without ``--calibration-fraction``) or they share no study."""
        frames = [g.calibration_predictions() for g in self.groups]
        return self._shared_studies(frames)

    def _shared_studies(self, frames: list[pd.DataFrame | None]) -> pd.DataFrame | None:
        """One column per group over the studies every group's frame (``id, label, prob``) has, in content order;
        None when a group has no frame or they share no study."""
        if any(f is None for f in frames):
            return None
        df = frames[0][["id", "label"]].copy()
        for g, f in zip(self.groups, frames):
            df = df.merge(f[["id", "prob"]].rename(columns={"prob": g.name}), on="id")
        return _content_order(df) if len(df) else None

    def calibrate(self, studies: pd.DataFrame, triage: float | None = None, threshold: float | None = None,
                  use_calibration_split: bool = True, tta: bool = False) -> Calibrated:
        """Calibrated study scores: each member's own calibration on its column, the combiner (fitted on the
        validation studies), then an ensemble calibration and, with ``triage``, a :class:`zoo.calibration.Triage` at
        that error rate, for exactly these members and this combiner. ``ensemble_raw`` keeps the raw score.

        The decision threshold is ``threshold`` (on the calibrated scale: ``predict.py --threshold``) or Youden's J
        on the calibrated validation scores; the triage labels studies with it (``is_abnormal``), so a decided
        study's label is the ``--binary`` verdict.

        With a calibration split (members trained with ``--calibration-fraction``) the ensemble calibration and the
        triage are fitted on it alone: studies no selection step saw, so the triage is ``certified``. Without one
        they are fitted on the validation studies, and the triage says it guarantees nothing.
        ``use_calibration_split=False`` fits on the validation studies even when there is a split (for scores that
        feed training, e.g. pseudo-labels, which must not see it); the triage is then not certified.
        ``tta``: ``studies`` were scored with test-time augmentation; the calibration studies' stored scores were not,
        so the two are not exchangeable and the triage is not certified.

        The fit depends only on the members, the combiner and these options, never on ``studies``: it is made once
        per ensemble and options (:meth:`fit_calibration`) and applied to every table after."""
        fit = self.fit_calibration(triage, threshold, use_calibration_split, tta)
        out = studies.copy()
        out["ensemble_raw"] = out["ensemble"]
        out = self._calibrated(out)
        out["ensemble"] = fit.calibrator(self.combine(out, calibrated=True).to_numpy())
        return Calibrated(**vars(fit), studies=out)

    def fit_calibration(self, triage: float | None = None, threshold: float | None = None,
                        use_calibration_split: bool = True, tta: bool = False) -> CalibrationFit:
        """The ensemble calibration, decision threshold and triage of :meth:`calibrate`, fitted on the members'
        calibration split (else their validation studies) on the first call with these options and kept."""
        key = (triage, threshold, use_calibration_split, tta)
        if key not in self._fits:
            self._fits[key] = self._fit_calibration(triage, threshold, use_calibration_split, tta)
        return self._fits[key]

    def _fit_calibration(self, triage: float | None, threshold: float | None,
                         use_calibration_split: bool, tta: bool = False) -> CalibrationFit:
        from zoo.calibration import Calibrator, Triage

        val = self.validation_studies(calibrated=True)
        cal = self.calibration_studies() if use_calibration_split else None
        fit_on = cal if cal is not None else val  # the ensemble calibration's (and triage's) studies
        if triage is not None and fit_on is None:
            raise MemberError("--triage needs the members' validation predictions (val_predictions.csv, written by "
                              "training and pushed to the Hub with the member); none shared by these members")
        ens_cal = Calibrator()
        if fit_on is not None:
            fit_score = self.combine(fit_on, calibrated=True).to_numpy()
            ens_cal = Calibrator.fit(fit_on["label"].to_numpy(), fit_score)
        member_thresholds = self.member_thresholds(calibrated=True)
        if threshold is not None:
            threshold = float(threshold)
        elif val is not None:  # chosen on the calibrated validation scores, as each member's own threshold was
            val_score = ens_cal(self.combine(val, calibrated=True).to_numpy())
            threshold = best_threshold(val["label"].to_numpy(), val_score)
        else:  # (a combiner with a reference, rank, cannot exist without validation predictions)
            members = pd.DataFrame([{m.name: member_thresholds[m.name] for m in self.members}])  # groups average
            threshold = float(self.combine(members, calibrated=True).iloc[0])
        tri = None
        if triage is not None:  # labels at the threshold above, fixed before the calibration studies' labels count
            why = self.uncertified_backends() if cal is not None else ""
            if cal is not None and tta:  # the guarantee needs test scores made as the calibration studies' were
                why = "; ".join(filter(None, [why, "--tta averages each image with its flip, but the calibration "
                                              "studies' stored scores were computed without it (drop --tta)"]))
            tri = Triage.fit(fit_on["label"].to_numpy(), ens_cal(fit_score), triage,
                             certified=cal is not None and not why, decision_threshold=threshold,
                             uncertified_because=why)
        return CalibrationFit(threshold, ens_cal, tri, 0 if val is None else len(val), 0 if cal is None else len(cal),
                              member_thresholds)

    def decode(self, paths: list[str], cache_dir: str | None = None, quiet: bool = False,
               max_gb: float | None = None) -> dict[int, ImageArray]:
        """``paths`` decoded once at each member image size: ``{size: ImageArray}``; ``max_gb`` bounds the cache
        folder (:func:`zoo.data.load_images`; default ``BONE_ZOO_CACHE_MAX_GB`` or 20)."""
        return {size: load_images(paths, size, cache_dir, quiet=quiet, max_gb=max_gb)
                for size in sorted({m.img_size for m in self.members})}

    def predict_images(self, images: pd.DataFrame, batch_size: int = 0, tta: bool = False, workers: int = -1,
                       cache_dir: str | None = None, quiet: bool = False, arrays: dict[int, ImageArray] | None = None,
                       max_gb: float | None = None) -> tuple[pd.DataFrame, dict[str, str]]:
        """``images`` (path, id, part, label) -> the same rows with one probability column per member (NaN for
        unreadable images), and ``{path: error}`` of those. ``arrays`` reuses :meth:`decode` of the same paths
        (else they are decoded into ``cache_dir``, bounded by ``max_gb``). ``batch_size`` 0 picks one for the device
        (:func:`zoo.inference.auto_batch_size`)."""
        out = images.reset_index(drop=True).copy()
        errors: dict[str, str] = {}
        arrays = arrays or self.decode(out["path"].tolist(), cache_dir, quiet, max_gb)
        for size, arr in arrays.items():
            errors.update(arr.errors)
            rows = np.flatnonzero(arr.ok)
            for m in self.members:
                if m.img_size != size:
                    continue
                probs = np.full(len(out), np.nan)
                runner = self.choice(m).runner
                probs[rows] = (self._torch_probs(m, arr, rows, batch_size, tta, workers, quiet) if runner is None
                               else self._graph_probs(runner, arr, rows, batch_size, tta))
                out[m.name] = probs
        return out, errors

    def _torch_probs(self, m: Member, arr: ImageArray, rows: np.ndarray, batch_size: int, tta: bool, workers: int,
                     quiet: bool) -> np.ndarray:
        from torch.utils.data import DataLoader

        from zoo.inference import ArrayDataset, auto_batch_size, auto_workers, predict_array

        device = self.device
        loader = DataLoader(ArrayDataset(arr, rows), batch_size=auto_batch_size(batch_size, device),
                            num_workers=auto_workers(workers, device), pin_memory=device.type == "cuda")
        return predict_array(m.model, loader, device, self.precision, tta=tta, quiet=quiet, desc=m.name)

    def _graph_probs(self, runner, arr: ImageArray, rows: np.ndarray, batch_size: int, tta: bool) -> np.ndarray:
        bs = batch_size if batch_size > 0 else GRAPH_BATCH
        batches = (arr.read(rows[i:i + bs])[:, None] for i in range(0, len(rows), bs))
        return runner.predict(batches, tta=tta)

    def predict_studies(self, images: pd.DataFrame, aggregate: str = "mean", **kwargs) -> pd.DataFrame:
        """One row per study: ``id, part, label``, each member's study probability (``aggregate`` of its readable
        images), each fold group's (the mean of its fold members) and ``ensemble`` (the groups combined with
        :attr:`combiner`). Studies with no readable image get NaN.
        Extra keyword arguments go to :meth:`predict_images`; its errors are in ``result.attrs["errors"]``."""
        img, errors = self.predict_images(images, **kwargs)
        return self.studies(img, errors, aggregate)

    def studies(self, img: pd.DataFrame, errors: dict[str, str], aggregate: str = "mean") -> pd.DataFrame:
        """:meth:`predict_studies` from per-image probabilities already computed (:meth:`predict_images`'s table and
        errors, or :func:`zoo.sharding.predict_chunked`'s)."""
        st = self.with_groups(aggregate_studies(img, self.names, aggregate))
        st["ensemble"] = self.combine(st)
        st.attrs["errors"] = errors
        st.attrs["image_predictions"] = img
        return st
