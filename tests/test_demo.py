"""The Gradio demo: the pure analyse() function, the app over HTTP with gradio_client, and a real browser."""

import io
import os
import shutil
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import RUN_SIZE, TINY, free_port
from PIL import Image

from demo.app import AnalysisError, MemberPool, analyse, build_demo, summary_markdown
from zoo.cam import compute_cam, fuse_cams

CHROMIUM = Path("/usr/bin/chromium")


@pytest.fixture(scope="module")
def xray(trained_run):
    labels = pd.read_csv(trained_run["data"] / "test_labels.csv")
    sid = labels[labels["label"] == 1]["id"].iloc[0]
    return sorted((trained_run["data"] / "test").glob(f"{sid}_image*"))


def test_analyse_study(pool, xray):
    a = analyse([str(p) for p in xray], TINY, "Grad-CAM", pool, combiner="mean")
    assert 0 <= a.probability <= 1
    assert a.members["member"].tolist() == TINY
    assert np.isclose(a.raw, a.members["probability"].mean(), atol=1e-3)  # before the ensemble calibration
    assert len(a.panels) == len(xray) * (len(TINY) + 2)
    assert all(img.ndim == 3 and img.shape[2] == 3 for img, _ in a.panels)
    assert a.spread == pytest.approx(a.members["probability"].max() - a.members["probability"].min(), abs=1e-3)
    assert "P(abnormal)" in summary_markdown(a)


def test_fused_panel_is_the_documented_fusion(pool, xray):
    from zoo.data import load_images

    fp32 = MemberPool(pool.folders, precision="fp32")  # the reference below is computed in fp32
    a = analyse([str(xray[0])], TINY, "Grad-CAM", fp32)
    img = np.array(load_images([str(xray[0])], RUN_SIZE, "").array[0])
    cams = [compute_cam(fp32.member(n).model, img, "gradcam") for n in TINY]
    from zoo.cam import overlay

    expected = overlay(img, fuse_cams(cams, a.members["probability"].tolist()))
    fused_panel = a.panels[-1]
    assert "ensemble" in fused_panel[1]
    assert np.abs(fused_panel[0].astype(int) - expected.astype(int)).max() <= 2  # probabilities rounded in the table


def test_bad_inputs_are_messages(pool, xray, tmp_path):
    (tmp_path / "notes.txt").write_text("not an x-ray")
    with pytest.raises(AnalysisError, match="Could not read any upload"):
        analyse([str(tmp_path / "notes.txt")], TINY, "Grad-CAM", pool)
    with pytest.raises(AnalysisError, match="Pick at least one"):
        analyse([str(xray[0])], [], "Grad-CAM", pool)
    with pytest.raises(AnalysisError, match="Upload at least one"):
        analyse([], TINY, "Grad-CAM", pool)
    big = tmp_path / "big.png"
    big.write_bytes(b"\0" * (26 * 2**20))
    with pytest.raises(AnalysisError, match="limit"):
        analyse([str(big)], TINY, "Grad-CAM", pool)
    a = analyse([str(xray[0]), str(tmp_path / "notes.txt")], TINY[:1], "EigenCAM", pool)
    assert a.skipped and "notes.txt" in a.skipped[0]


def test_sixteen_bit_upload(pool, tmp_path):
    arr = (np.linspace(0, 4095, 80 * 60).reshape(80, 60)).astype(np.uint16)
    Image.fromarray(arr).save(tmp_path / "x16.png")
    a = analyse([str(tmp_path / "x16.png")], TINY, "LayerCAM", pool)
    assert 0 <= a.probability <= 1


@pytest.fixture(scope="module")
def served(pool, trained_run, tmp_path_factory):
    app = build_demo(pool, examples=False)
    port = free_port()
    app.launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True, max_file_size="25mb")
    yield f"http://127.0.0.1:{port}/"
    app.close()


@pytest.mark.slow
def test_gradio_client_end_to_end(served, xray):
    from gradio_client import Client, handle_file

    client = Client(served, verbose=False)
    md, label, table, gallery = client.predict([handle_file(str(xray[0]))], TINY, "Grad-CAM", api_name="/analyse")
    assert "P(abnormal)" in md
    assert {c["label"] for c in label["confidences"]} == {"normal", "abnormal"}
    assert [row[0] for row in table["data"]] == TINY
    assert len(gallery) == len(TINY) + 2
    assert all(Path(item["image"]).is_file() for item in gallery)
    with pytest.raises(Exception, match="Pick at least one"):
        client.predict([handle_file(str(xray[0]))], [], "Grad-CAM", api_name="/analyse")


@pytest.mark.slow
@pytest.mark.browser
@pytest.mark.skipif(not CHROMIUM.exists(), reason="Debian's chromium not installed (.ci/run installs it)")
def test_real_browser_upload_click_and_heatmaps(served, xray, tmp_path):
    from playwright.sync_api import sync_playwright

    shutil.copy(xray[0], tmp_path / "study.png")
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=[
            "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
            "--disable-component-update"])
        page = browser.new_page(viewport={"width": 1400, "height": 1100})
        page.goto(served)
        page.locator("#upload input[type=file]").set_input_files(str(tmp_path / "study.png"))
        page.wait_for_timeout(1500)
        for name in TINY:  # both members ticked (the default: every voter; make sure)
            box = page.locator("#members").get_by_label(name, exact=False)
            if not box.is_checked():
                box.check()
        page.locator("#analyse").click()
        page.wait_for_selector("#heatmaps img", timeout=60_000)
        deadline = time.time() + 30
        while page.locator("#heatmaps img").count() < len(TINY) + 2 and time.time() < deadline:
            page.wait_for_timeout(300)
        assert page.locator("#heatmaps img").count() >= len(TINY) + 2
        assert "P(abnormal)" in page.locator("#verdict").inner_text()
        page.screenshot(path=str(tmp_path / "demo.png"), full_page=True)
        browser.close()
    assert (tmp_path / "demo.png").stat().st_size > 20_000


def test_importing_the_app_has_no_side_effects(tmp_path):
    """No folder scan, no download, no synthetic examples at import; ``demo.app.demo`` is built on first access."""
    import subprocess
    import sys

    from conftest import ROOT

    code = ("import demo.app as a, gradio as gr; assert 'default_pool' in dir(a); "
            "assert a.default_pool.cache_info().currsize == 0, 'pool built at import'; "
            "import os; assert not os.path.exists('data'), 'examples generated at import'; "
            "assert isinstance(a.demo, gr.Blocks)")
    env = {**__import__("os").environ, "BONE_ZOO_EXAMPLES": "0", "BONE_ZOO_WEIGHTS": str(tmp_path / "none"),
           "PYTHONPATH": str(ROOT)}
    proc = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=180,
                          env=env)
    assert proc.returncode == 0, proc.stderr[-2000:]


@pytest.mark.slow
def test_demo_serves_on_gradio_server_port(tmp_path):
    import os
    import subprocess
    import sys
    import urllib.request

    from conftest import ROOT

    port = free_port()
    env = {**os.environ, "GRADIO_SERVER_PORT": str(port), "GRADIO_SERVER_NAME": "127.0.0.1",
           "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen([sys.executable, "-m", "demo", "--weights", str(tmp_path / "none")], cwd=tmp_path,
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline, ok = time.time() + 120, False
        while time.time() < deadline and proc.poll() is None and not ok:
            try:
                ok = urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=2).status == 200
            except OSError:
                time.sleep(0.5)
        assert ok, "the demo did not answer on GRADIO_SERVER_PORT"
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def test_cam_pass_probabilities_are_the_prediction_path(pool, xray):
    """explain_study takes each member's probability from its CAM forward pass: the same numbers predict.py gives."""
    from zoo.ensemble import Ensemble
    from zoo.explain import explain_study

    members = [pool.member(n) for n in TINY]
    ens = Ensemble(members, precision="fp32")
    ex = explain_study(ens, [str(p) for p in xray])
    table = pd.DataFrame({"path": [str(p) for p in xray], "id": "s", "part": "", "label": np.nan})
    img, _ = ens.predict_images(table, cache_dir="", quiet=True)
    for n in TINY:
        assert np.abs(ex.image_probs[n].to_numpy() - img[n].to_numpy()).max() < 1e-4
        assert ex.cams[n].shape[0] == len(xray) and np.isfinite(ex.cams[n]).all()
    assert ex.fused.shape[0] == len(xray)


def test_demo_uses_the_chosen_combiner(pool, xray):
    a = analyse([str(p) for p in xray], TINY, "Grad-CAM", pool, "weighted")
    w = np.array([pool.member(n).val_auc for n in TINY])
    probs = a.members.set_index("member").loc[TINY, "probability"].to_numpy()
    assert a.raw == pytest.approx(float(probs @ (w / w.sum())), abs=1e-3)  # before the ensemble calibration
    with pytest.raises(AnalysisError, match="unknown ensemble method"):
        analyse([str(p) for p in xray], TINY, "Grad-CAM", pool, "nope")


def test_demo_shows_calibrated_probability_and_triage(pool, xray):
    a = analyse([str(p) for p in xray], TINY, "Grad-CAM", pool, "mean", 0.1)
    assert 0 <= a.probability <= 1 and a.triage in {"normal", "abnormal", "uncertain"} and a.triage_rate == 0.1
    md = summary_markdown(a)
    assert "Triage" in md and a.triage in md and "Calibrated P(abnormal)" in md


@pytest.mark.slow
def test_headline_verdict_is_predict_binary(served, trained_run, tmp_path):
    """One verdict (issue 18.4): for the same study, the demo's headline over HTTP with its default selection (every
    member, ``auto``) is ``predict.py --binary``'s label, and its headline and bar show predict.py's (calibrated)
    score. The studies checked include those where the raw score at the combiner's threshold (the old headline)
    decides otherwise."""
    from conftest import run_script
    from gradio_client import Client, handle_file

    data, weights = trained_run["data"], trained_run["out"]
    csv = {}
    for name, extra in (("calibrated", []), ("raw", ["--no-calibrate"])):
        p = run_script("predict.py", "--data", data, "--weights", weights, "--binary", "--quiet", *extra,
                       "-output", tmp_path / f"{name}.csv", cwd=tmp_path)
        assert p.returncode == 0, p.stderr
        csv[name] = pd.read_csv(tmp_path / f"{name}.csv", dtype={"id": str}).set_index("id")
    cal, raw = csv["calibrated"], csv["raw"]
    differ = cal.index[cal["abnormal"] != raw["abnormal"]].tolist()
    ids = list(dict.fromkeys(differ[:4] + cal.index[cal["abnormal"] == 1][:1].tolist()
                             + cal.index[cal["abnormal"] == 0][:1].tolist()))
    client = Client(served, verbose=False)
    for sid in ids:
        images = sorted((data / "test").glob(f"{sid}_image*"))
        md, label, _, _ = client.predict(files=[handle_file(str(p)) for p in images], api_name="/analyse")
        headline = md.splitlines()[0]
        verdict = "ABNORMAL" if cal.at[sid, "abnormal"] == 1 else "normal"
        assert headline.startswith(f"## {verdict}: P(abnormal) = "), (sid, headline, cal.loc[sid].tolist())
        shown = float(headline.rsplit("= ", 1)[1])
        assert shown == pytest.approx(cal.at[sid, "label"], abs=2e-3), (sid, headline)
        bar = {c["label"]: c["confidence"] for c in label["confidences"]}
        assert bar["abnormal"] == pytest.approx(shown, abs=1e-3)


def test_voters_fold_members_are_one_choice_and_all_are_ticked(trained_run, tmp_path):
    """A backbone's fold members are one voter in the members list, and the demo starts with every voter ticked:
    the ensemble predict.py uses by default."""
    import json

    run = tmp_path / "run"
    shutil.copytree(trained_run["out"] / "regnetx_002", run / "regnetx_002")
    for k in range(2):  # two fold members of resnet10t (copies, with the fold recorded)
        d = run / f"resnet10t-fold{k}"
        shutil.copytree(trained_run["out"] / "resnet10t", d)
        cfg = json.loads((d / "config.json").read_text())
        cfg["training"] = {**cfg.get("training", {}), "fold": k, "folds": 2}
        (d / "config.json").write_text(json.dumps(cfg))
    fold_pool = MemberPool.from_source(run)
    assert [v for _, v in fold_pool.choices()] == ["regnetx_002", "resnet10t"]
    assert "2 folds" in dict((v, k) for k, v in fold_pool.choices())["resnet10t"]
    assert fold_pool.members_of(["resnet10t"]) == ["resnet10t-fold0", "resnet10t-fold1"]
    app = build_demo(fold_pool, examples=False)
    box = next(b for b in app.blocks.values() if getattr(b, "elem_id", None) == "members")
    assert sorted(box.value) == ["regnetx_002", "resnet10t"]
    image = str(next(iter(sorted((trained_run["data"] / "test").glob("*_image1.png")))))
    a = analyse([image], ["resnet10t"], "Grad-CAM", fold_pool, combiner="mean")
    assert a.members["member"].tolist() == ["resnet10t-fold0", "resnet10t-fold1"]


def test_a_panel_being_downloaded_is_never_rewritten_under_its_reader(pool, xray, tmp_path, monkeypatch):
    """Two users analysing the same image get the same panels. The second user's result must not rewrite the file
    the first is still downloading: Gradio's own saving of an array rewrote its content-addressed file in place, and
    a download under way came out torn ("Too little data for declared Content-Length" in the ten-user test). The
    panels are written to a new file and renamed into place, so the reader's open file keeps its whole image."""
    monkeypatch.setenv("GRADIO_TEMP_DIR", str(tmp_path / "gradio"))
    app = build_demo(pool, examples=False)
    fn = next(f for f in app.fns.values() if f.api_name == "analyse")
    gallery = next(b for b in app.blocks.values() if getattr(b, "elem_id", None) == "heatmaps")

    def served() -> list[str]:  # the files the gallery's result would be served from, as Gradio postprocesses it
        panels = fn.fn([str(xray[0])], TINY, "Grad-CAM")[3]
        return [item.image.path for item in gallery.postprocess(panels).root]

    first = served()
    assert len(first) == len(TINY) + 2 and all(Path(p).is_relative_to(gallery.GRADIO_CACHE) for p in first)
    panels = analyse([str(xray[0])], TINY, "Grad-CAM", pool).panels  # what the gallery shows, in its order
    captions = [caption for _, caption in fn.fn([str(xray[0])], TINY, "Grad-CAM")[3]]
    assert captions == [caption for _, caption in panels]
    assert [np.asarray(Image.open(p).convert("RGB")).tolist() for p in first] == [a.tolist() for a, _ in panels]
    readers = [open(p, "rb") for p in first]  # downloads under way  # noqa: SIM115
    try:
        whole = [Path(p).read_bytes() for p in first]
        second = served()
        assert second == first  # the same image: the same content-addressed files
        for reader, path, data in zip(readers, first, whole, strict=True):
            assert os.fstat(reader.fileno()).st_ino != os.stat(path).st_ino  # a new file, not the reader's rewritten
            assert reader.read() == data and Image.open(path).size == Image.open(io.BytesIO(data)).size
    finally:
        for reader in readers:
            reader.close()
    assert not [f for f in Path(first[0]).parent.iterdir() if f.suffix == ".tmp"]  # no temporary file left behind
