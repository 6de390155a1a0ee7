"""Dataset layouts: the class competition's (``train/``, ``test/``, ``train.csv``) and MURA-v1.1's.

Both give image tables with one row per image: ``path, id, part, label, patient`` (label 0/1, NaN = unlabelled).
A study is all the images with one ``id``; ``patient`` groups the studies of one patient (MURA's ``patientNNNNN``, an
optional ``patient`` column of the competition's csv files); a study whose patient is not named is its own group.
"""

from __future__ import annotations

import os
import re
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from zoo.data.io import IMAGE_SUFFIXES, examples

COLUMNS = ["path", "id", "part", "label", "patient"]
# HAND_7c61ce2000_image3.png -> part HAND, study 7c61ce2000, image 3 (study ids may hold underscores and dashes)
NAME_RE = re.compile(r"^(?P<part>[A-Za-z]+)_(?P<study>[0-9A-Za-z][0-9A-Za-z_\-]*)_image(?P<n>\d+)$", re.IGNORECASE)
MURA_RE = re.compile(r"XR_(?P<part>[A-Z]+)/(?P<patient>patient\d+)/(?P<study>study\d+)_(?P<tag>positive|negative)")


class LayoutError(ValueError):
    """A folder that is not a dataset this tool can read; the message says what is missing."""


@dataclass
class DatasetTables:
    """What :func:`load_dataset` read from a dataset folder: its layout name, one image table (a DataFrame, one row
    per image: ``path, id, part, label, patient``) for each of the training and test splits, and notes on what was
    skipped. Plain tables, not a ``torch.utils.data.Dataset``: the trainer makes those from them."""

    root: Path
    layout: str
    train: pd.DataFrame
    test: pd.DataFrame
    notes: list[str] = field(default_factory=list)

    @property
    def name(self) -> str:
        return self.root.name

    @property
    def grouping(self) -> str:
        """How validation splits and folds group the training studies: ``"patient"`` or ``"study"``."""
        return grouping(self.train)

    def summary(self) -> str:
        st = studies(self.train[self.train["label"].notna()])
        by = "" if self.grouping == "study" else f"; splits grouped by patient ({st['patient'].nunique()} patients)"
        lines = [f"{self.root} ({self.layout} layout{by})"]
        for split, df in (("train", self.train), ("test", self.test)):
            st = studies(df)
            n_lab = int(st["label"].notna().sum())
            n_pos = int((st["label"] == 1).sum())
            parts = ", ".join(f"{p} {n}" for p, n in st["part"].value_counts().sort_index().items())
            lines.append(
                f"  {split}: {len(df)} images, {len(st)} studies ({n_lab} labelled, {n_pos} abnormal, "
                f"{len(st) - n_lab} unlabelled) [{parts}]"
            )
        return "\n".join(lines + [f"  note: {n}" for n in self.notes])


def studies(images: pd.DataFrame) -> pd.DataFrame:
    """One row per study: ``id, part, label, n_images, patient`` (label NaN when unlabelled; patient = the study id
    where no patient is named), sorted by id."""
    if images.empty:
        return pd.DataFrame({"id": [], "part": [], "label": [], "n_images": [], "patient": []})
    agg = {"part": ("part", "first"), "label": ("label", "first"), "n_images": ("path", "size")}
    if "patient" in images.columns:
        agg["patient"] = ("patient", "first")
    st = images.groupby("id", sort=True).agg(**agg).reset_index()
    st["patient"] = st["patient"].fillna(st["id"]) if "patient" in st.columns else st["id"]
    return st


def grouping(images: pd.DataFrame) -> str:
    """``"patient"`` when the table names a patient for some study (then splits keep a patient's studies on one
    side), else ``"study"`` (each study is its own group)."""
    if "patient" not in images.columns or images.empty:
        return "study"
    named = images["patient"].notna() & (images["patient"].astype(str) != images["id"].astype(str))
    return "patient" if bool(named.any()) else "study"


MAX_LISTED = 20  # bad rows named in one error (the rest are counted)


def _listed(items: list[str], what: str) -> str:
    """The first :data:`MAX_LISTED` of ``items`` (one per bad row), then how many more there are."""
    more = len(items) - MAX_LISTED
    return "; ".join(items[:MAX_LISTED]) + (f"; and {more} more {what}" if more > 0 else "")


def _show(value) -> str:
    return "NA" if value != value else f"{value:g}" if isinstance(value, float) else str(value)


def read_label_table(path: str | Path, notes: list[str] | None = None) -> pd.DataFrame:
    """``id,label[,patient]`` csv -> one row per study: ``label`` (0/1; NaN for ``NA`` or empty) and ``patient``
    (the optional column's value; NaN where it is absent or empty), indexed by id. Every bad row is named in one
    error (the first :data:`MAX_LISTED` and a count of the rest), so one run shows all that must be fixed; what is
    tolerated (repeated rows that agree) goes to ``notes``, or is warned when none is given."""
    path = Path(path)
    try:
        df = pd.read_csv(path, dtype=str, keep_default_na=False)
    except (pd.errors.ParserError, UnicodeDecodeError, pd.errors.EmptyDataError) as exc:
        raise LayoutError(f"{path}: not a readable csv ({exc})") from exc
    missing = {"id", "label"} - set(df.columns)
    if missing:
        raise LayoutError(f"{path}: needs columns id,label; missing {sorted(missing)} (has {list(df.columns)})")
    raw = df["label"].str.strip()
    unlabelled = raw.str.upper().isin(["", "NA", "NAN", "NULL", "NONE"])
    labels = pd.to_numeric(raw.where(~unlabelled), errors="coerce")
    bad = np.flatnonzero((~unlabelled & ~labels.isin([0, 1])).to_numpy())
    if len(bad):
        rows = [f"line {i + 2}: label {df['label'].iloc[i]!r} for {df['id'].iloc[i]!r}" for i in bad]
        raise LayoutError(f"{path}: {len(bad)} row(s) whose label is not 0, 1, NA or empty: "
                          + _listed(rows, "row(s)"))
    patient = df["patient"].str.strip().where(lambda v: v != "").astype(object) if "patient" in df.columns else None
    table = pd.DataFrame({"id": df["id"].str.strip(), "label": labels.to_numpy(dtype=float), "patient": patient,
                          "line": np.arange(len(df)) + 2})
    dup = table[table["id"].duplicated(keep=False)]
    conflicts = []
    for sid, rows in dup.groupby("id", sort=False):
        for col in ("label", "patient"):
            if rows[col].nunique(dropna=False) > 1:
                shown = ", ".join(f"line {ln}: {_show(v)}" for ln, v in zip(rows["line"], rows[col]))
                conflicts.append(f"id {sid!r} has conflicting {col}s ({shown})")
    if conflicts:
        raise LayoutError(f"{path}: {len(conflicts)} conflict(s), keep one row per study: "
                          + _listed(conflicts, "conflict(s)"))
    if len(dup):
        note = f"{path}: {dup['id'].nunique()} id(s) repeated with the same label (e.g. {dup['id'].iloc[0]!r}); " \
            "each kept once"
        if notes is None:
            warnings.warn(note, stacklevel=2)
        else:
            notes.append(note)
        table = table.drop_duplicates("id")
    return table.set_index("id")[["label", "patient"]]


def read_label_csv(path: str | Path, notes: list[str] | None = None) -> pd.Series:
    """``id,label`` csv -> Series id -> float label (0/1; NaN for ``NA`` or empty); see :func:`read_label_table`."""
    return read_label_table(path, notes)["label"]


def parse_image_name(path: Path) -> tuple[str, str] | None:
    """``(study id, PART)`` from ``PART_<study>_image<N>.ext``, or None if the name does not follow it."""
    m = NAME_RE.match(path.stem)
    if not m:
        return None
    part = m["part"].upper()
    return f"{part}_{m['study']}", part


def scan_competition_folder(folder: Path, notes: list[str] | None = None) -> pd.DataFrame:
    """Image table of one competition folder (``train/`` or ``test/``), labels NaN. Files whose names do not
    follow ``PART_<study>_image<N>`` become single-image studies named after the file (noted)."""
    rows, odd, stray, undecodable = [], [], [], []
    for p in sorted(folder.iterdir()):
        if not p.is_file() or p.name.startswith("."):
            continue
        try:
            p.name.encode("utf-8")
        except UnicodeEncodeError:  # bytes that are not UTF-8 (Python keeps them as surrogates): unprintable
            undecodable.append(p.name.encode("utf-8", "backslashreplace").decode("ascii", "backslashreplace"))
            continue
        if p.suffix.lower() not in IMAGE_SUFFIXES:
            stray.append(p.name)
            continue
        parsed = parse_image_name(p)
        if parsed is None:
            odd.append(p.name)
            parsed = (p.stem, p.stem.split("_")[0].upper() if "_" in p.stem else "UNKNOWN")
        rows.append((str(p), parsed[0], parsed[1], np.nan, parsed[0]))  # patient: the study until named
    if notes is not None:
        if odd:
            notes.append(f"{folder}: {len(odd)} file(s) not named PART_<study>_image<N> (each kept as its own "
                         f"study): {examples(odd)}")
        if stray:
            notes.append(f"{folder}: {len(stray)} file(s) skipped, not images by their extension "
                         f"({', '.join(sorted(IMAGE_SUFFIXES))}): {examples(stray)}")
        if undecodable:
            notes.append(f"{folder}: {len(undecodable)} file(s) skipped, their names are not valid UTF-8 (rename "
                         f"them): {examples(undecodable)}")
    return pd.DataFrame(rows, columns=COLUMNS)


def _attach_labels(images: pd.DataFrame, table: pd.DataFrame, csv: Path, notes: list[str]) -> pd.DataFrame:
    images = images.copy()
    images["label"] = images["id"].map(table["label"]).astype(float)
    images["patient"] = images["id"].map(table["patient"]).astype(object).fillna(images["id"])  # unnamed: own group
    no_image = sorted(set(table.index) - set(images["id"]))
    if no_image:
        notes.append(f"{csv.name}: {len(no_image)} id(s) have no image (e.g. {no_image[0]}); ignored")
    not_in_csv = sorted(set(images["id"]) - set(table.index))
    if not_in_csv:
        notes.append(f"{csv.name}: {len(not_in_csv)} studies with images are not in it (e.g. {not_in_csv[0]}); "
                     "treated as unlabelled")
    return images


def load_competition(root: Path) -> DatasetTables:
    notes: list[str] = []
    splits = {}
    for split, csv_names in (("train", ("train.csv",)), ("test", ("test_labels.csv", "test.csv"))):
        folder = root / split
        images = scan_competition_folder(folder, notes) if folder.is_dir() else pd.DataFrame(columns=COLUMNS)
        csv = next((root / c for c in csv_names if (root / c).is_file()), None)
        if csv is not None and not images.empty:
            images = _attach_labels(images, read_label_table(csv, notes), csv, notes)
        splits[split] = images
    return DatasetTables(root, "competition", splits["train"], splits["test"], notes)


def _mura_root(root: Path) -> Path | None:
    for cand in (root, root / "MURA-v1.1"):
        if (cand / "train_image_paths.csv").is_file() or (cand / "valid_image_paths.csv").is_file():
            return cand
    return None


def _load_mura_split(mura: Path, split: str, notes: list[str]) -> pd.DataFrame:
    paths_csv = mura / f"{split}_image_paths.csv"
    if not paths_csv.is_file():
        return pd.DataFrame(columns=COLUMNS)
    base = mura.parent  # paths in MURA's csv files start with "MURA-v1.1/"
    rel = pd.read_csv(paths_csv, header=None, names=["path"], dtype=str)["path"].str.strip()
    inside = mura.resolve()
    rows, bad, outside = [], 0, []
    for r in rel:
        path = base / r if r.startswith(mura.name + "/") else mura / r
        # resolved (.., absolute entries, symlinks) an entry must stay under the dataset root: never read outside it
        if not path.resolve().is_relative_to(inside):
            outside.append(r)
            continue
        m = MURA_RE.search(Path(os.path.relpath(path, mura)).as_posix())  # the ids from the normalised path
        if not m:
            bad += 1
            continue
        study_id = f"XR_{m['part']}/{m['patient']}/{m['study']}_{m['tag']}"
        rows.append((str(path), study_id, m["part"], np.nan, m["patient"]))
    if bad:
        notes.append(f"{paths_csv.name}: {bad} path(s) not like XR_PART/patientN/studyN_positive/imageN.png; ignored")
    if outside:
        notes.append(f"{paths_csv.name}: {len(outside)} path(s) lead outside the dataset root {mura}; skipped, not "
                     f"read: {examples(outside)}")
    images = pd.DataFrame(rows, columns=COLUMNS)
    studies_csv = mura / f"{split}_labeled_studies.csv"
    if studies_csv.is_file():
        st = pd.read_csv(studies_csv, header=None, names=["study", "label"], dtype={"study": str})
        ids = st["study"].str.extract(MURA_RE.pattern).apply(
            lambda r: f"XR_{r['part']}/{r['patient']}/{r['study']}_{r['tag']}", axis=1)
        images["label"] = images["id"].map(pd.Series(st["label"].astype(float).to_numpy(), index=ids)).astype(float)
    else:  # the folder name says it
        images["label"] = images["id"].str.endswith("_positive").astype(float)
        notes.append(f"{studies_csv.name} missing: labels taken from the study folder names")
    return images


def load_mura(root: Path) -> DatasetTables:
    mura = _mura_root(root)
    assert mura is not None
    notes: list[str] = []
    train = _load_mura_split(mura, "train", notes)
    test = _load_mura_split(mura, "valid", notes)  # MURA's public evaluation split
    return DatasetTables(mura, "mura", train, test, notes)


def detect_layout(root: str | Path) -> str:
    """``"mura"`` or ``"competition"``; a folder that is neither is a :class:`LayoutError` saying what to provide."""
    root = Path(root)
    if not root.is_dir():
        raise LayoutError(f"{root}: no such folder")
    if _mura_root(root) is not None:
        return "mura"
    if (root / "train").is_dir() or (root / "test").is_dir():
        return "competition"
    raise LayoutError(
        f"{root}: expected the competition layout (train/, test/ and train.csv) or MURA-v1.1 "
        "(train_image_paths.csv, train_labeled_studies.csv, ...); found neither"
    )


def load_dataset(root: str | Path) -> DatasetTables:
    """Read a dataset folder in either layout (auto-detected)."""
    root = Path(root).expanduser()
    ds = load_mura(root) if detect_layout(root) == "mura" else load_competition(root)
    for note in ds.notes:
        warnings.warn(note, stacklevel=2)
    return ds
