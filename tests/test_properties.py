"""Property-based tests (hypothesis) for the file-name/layout parser and study aggregation."""

from __future__ import annotations

import string
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd
from hypothesis import given, settings
from hypothesis import strategies as st

from zoo.data.layouts import parse_image_name, scan_competition_folder, studies
from zoo.metrics import aggregate_studies

PART = st.text(string.ascii_letters, min_size=1, max_size=8)
STUDY = st.from_regex(r"[0-9A-Za-z][0-9A-Za-z_\-]{0,14}", fullmatch=True)
EXT = st.sampled_from(["png", "jpg", "jpeg", "PNG", "dcm", "tif"])


@given(PART, STUDY, st.integers(0, 10_000), EXT)
def test_names_round_trip(part, study, n, ext):
    assert parse_image_name(Path(f"{part}_{study}_image{n}.{ext}")) == (f"{part.upper()}_{study}", part.upper())


@given(st.text(string.ascii_letters + string.digits + "_-. ", max_size=30))
def test_any_other_name_is_none_or_a_consistent_parse(name):
    parsed = parse_image_name(Path(name + ".png"))
    if parsed is not None:
        sid, part = parsed
        assert sid.startswith(part + "_") and part.isalpha() and part.isupper()


@settings(max_examples=25, deadline=None)
@given(st.lists(st.tuples(PART, STUDY, st.integers(1, 4)), min_size=1, max_size=12, unique_by=lambda t: (
    t[0].upper(), t[1].lower(), t[2])))
def test_a_folder_scans_to_one_row_per_image_grouped_by_study(files):
    with tempfile.TemporaryDirectory() as d:
        folder = Path(d)
        names = set()
        for part, study, n in files:
            name = f"{part}_{study}_image{n}.png"
            if name.lower() in {x.lower() for x in names}:
                continue  # case-insensitive file systems would merge these
            names.add(name)
            (folder / name).write_bytes(b"")
        df = scan_competition_folder(folder)
        assert len(df) == len(names)
        expected = {f"{n.split('_')[0].upper()}_{n.split('_', 1)[1].rsplit('_image', 1)[0]}" for n in names}
        assert set(df["id"]) == expected
        assert (studies(df)["n_images"].sum()) == len(names)


IDS = st.lists(STUDY.map(lambda s: f"HAND_{s}"), min_size=1, max_size=6, unique=True)


@settings(max_examples=60, deadline=None)
@given(IDS.flatmap(lambda ids: st.lists(st.tuples(st.sampled_from(ids), st.floats(0, 1)), min_size=1, max_size=30)),
       st.randoms(use_true_random=False))
def test_study_aggregation_is_per_study_and_order_free(rows, rnd):
    df = pd.DataFrame(rows, columns=["id", "p"]).assign(part="HAND", label=1.0)
    mean = aggregate_studies(df, "p")
    shuffled = df.sample(frac=1.0, random_state=rnd.randint(0, 2**31 - 1))
    pd.testing.assert_frame_equal(mean, aggregate_studies(shuffled, "p"), rtol=1e-12)  # any order: the same table

    assert list(mean["id"]) == sorted(df["id"].unique())  # one row per study, sorted
    for sid, group in df.groupby("id"):
        got = mean.loc[mean["id"] == sid, "p"].iloc[0]
        assert np.isclose(got, np.mean(group["p"].to_numpy()))
        mx = aggregate_studies(df, "p", "max")
        assert mx.loc[mx["id"] == sid, "p"].iloc[0] >= got - 1e-12
