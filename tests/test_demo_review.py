"""Demo hardening from the security review of issue 19: CAM work bounded by pixels per request, no server path in
what the user sees, a short-lived upload cache. Tiny saved members (resnet10t, 32 px); no training, no network."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import demo.app as app
from demo.app import AnalysisError, MemberPool, analyse, summary_markdown
from zoo.model import BoneClassifier


@pytest.fixture
def pool(tmp_path) -> MemberPool:
    torch.manual_seed(0)
    folder = BoneClassifier("resnet10t", img_size=32, head_hidden=[8]).save_member(tmp_path / "members" / "m32")
    return MemberPool({"m32": folder})


@pytest.fixture
def upload(tmp_path) -> Path:
    """Where Gradio keeps an upload: a server temp folder the user must never see."""
    d = tmp_path / "gradio-tmp" / "0f3c9a1b2d"
    d.mkdir(parents=True)
    Image.fromarray((np.random.default_rng(0).random((40, 40)) * 255).astype(np.uint8)).save(d / "wrist.png")
    (d / "broken.png").write_bytes(b"not a png at all")
    return d


def test_cam_work_is_bounded_by_pixels_per_request(pool, upload, monkeypatch):
    """files x the members' img_size^2 over the bound: refused with a message before any CAM pass."""
    monkeypatch.setattr(app, "MAX_CAM_PIXELS", 2 * 32**2)
    monkeypatch.setattr(app, "explain_study", lambda *a, **k: pytest.fail("a CAM pass ran past the pixel bound"))
    with pytest.raises(AnalysisError, match=r"3 image\(s\) x 1 member\(s\).*the limit is .* per analysis"):
        analyse([str(upload / "wrist.png")] * 3, ["m32"], pool=pool, combiner="mean")


def test_the_default_pixel_bound_allows_a_study_at_the_method_size():
    assert 8 * 8 * 512**2 <= app.MAX_CAM_PIXELS < 8 * 8 * 4096**2


def test_skipped_uploads_name_the_file_never_the_server_path(pool, upload):
    a = analyse([str(upload / "wrist.png"), str(upload / "broken.png")], ["m32"], pool=pool, combiner="mean")
    text = summary_markdown(a)
    assert "Skipped unreadable uploads" in text and "broken.png" in text
    assert str(upload) not in text and "gradio-tmp" not in text, text


def test_the_upload_cache_is_cleaned_within_a_quarter_hour():
    every, older_than = app.DELETE_CACHE
    assert every <= 600 and older_than <= 900
