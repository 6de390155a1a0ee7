"""Bounded work per demo request (issue 19.2), through the HTTP API of a demo served in this process, and Space
member specs written as data, not code (issue 19.5)."""

import ast

import gradio as gr
import pytest
from conftest import TINY, free_port

import demo.app as app_module
from demo.app import DELETE_CACHE, MAX_FILE_MB, MAX_FILES, build_demo


@pytest.fixture(scope="module")
def served(pool):
    """Launched as a user would, without max_file_size: the demo's own limit must hold."""
    demo = build_demo(pool, examples=False)
    port = free_port()
    demo.launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True)
    yield f"http://127.0.0.1:{port}/"
    demo.close()


@pytest.fixture(scope="module")
def client(served):
    from gradio_client import Client

    return Client(served, verbose=False)


@pytest.fixture(scope="module")
def image(trained_run) -> str:
    return str(next(iter(sorted((trained_run["data"] / "test").glob("*_image1.png")))))


def _ask(client, files, members, combiner="mean"):
    from gradio_client import handle_file

    return client.predict(files=[handle_file(str(f)) for f in files], members=members, method="Grad-CAM",
                          combiner=combiner, triage=0.05, api_name="/analyse")


@pytest.fixture
def cam_calls(monkeypatch):
    """Every CAM pass the server makes (it runs in this process): the member's model, once per call."""
    import zoo.explain

    calls, real = [], zoo.explain.compute_cams
    monkeypatch.setattr(zoo.explain, "compute_cams", lambda model, *a, **k: calls.append(model) or real(model, *a, **k))
    return calls


@pytest.mark.slow
def test_ten_thousand_duplicates_cost_one_cam_pass(client, image, cam_calls):
    _, _, table, gallery = _ask(client, [image], ["resnet10t"] * 10_000)
    assert len(cam_calls) == 1
    assert [row[0] for row in table["data"]] == ["resnet10t"] and len(gallery) == 3


@pytest.mark.slow
def test_fifty_files_are_refused_with_a_message(client, image, cam_calls, tmp_path):
    import shutil

    files = [shutil.copy(image, tmp_path / f"view{i}.png") for i in range(50)]
    with pytest.raises(Exception, match=f"50 files uploaded; the limit is {MAX_FILES} per analysis"):
        _ask(client, files, TINY[:1])
    assert cam_calls == []  # refused before any work


@pytest.mark.slow
def test_thirty_mb_upload_is_refused_by_gradio(client, served, tmp_path, monkeypatch):
    """Refused by Gradio (max_file_size): gradio_client reads the limit from the app and does not send the file, and
    a client that sends it anyway is answered 413 while it streams in; analyse() never sees it."""
    import httpx

    analysed = []
    monkeypatch.setattr(app_module, "analyse", lambda *a, **k: analysed.append(a))
    big = tmp_path / "big.png"
    big.write_bytes(b"\0" * (30 * 2**20))
    with pytest.raises(Exception, match=f"exceeds the maximum file size of {MAX_FILE_MB * 2**20} bytes"):
        _ask(client, [big], TINY[:1])
    with big.open("rb") as f:
        r = httpx.post(f"{served}gradio_api/upload", files={"files": ("big.png", f, "image/png")}, timeout=120)
    assert r.status_code == 413 and "maximum allowed size" in r.text
    assert analysed == []


@pytest.mark.slow
def test_ensembles_cache_never_exceeds_its_bound(client, pool, image, monkeypatch):
    monkeypatch.setattr(pool, "max_ensembles", 3)
    monkeypatch.setattr(pool, "_ensembles", type(pool._ensembles)())
    asks = [([TINY[0]], "mean"), ([TINY[1]], "mean"), (TINY, "mean"), (TINY, "weighted"), ([TINY[0]], "weighted"),
            ([TINY[1]], "weighted")]
    for members, combiner in asks:
        _ask(client, [image], members, combiner)
        assert len(pool._ensembles) <= 3
    both = (tuple(sorted(TINY)), "weighted")
    keys = list(pool._ensembles)
    assert both in keys and keys[-1] != both
    _ask(client, [image], [TINY[1], TINY[0], TINY[1]], "weighted")  # the same set, reordered and repeated
    assert set(pool._ensembles) == set(keys)  # the entry it was fitted for, not a new one
    assert list(pool._ensembles)[-1] == both  # now the most recently used


def test_max_file_size_reaches_every_launch(monkeypatch, tmp_path, trained_run):
    """`python -m demo`, `demo.app.demo.launch()` and the written Space all launch with max_file_size; the Blocks
    clean Gradio's cache (delete_cache)."""
    import runpy

    from demo.cli import get_args_parser, main
    from zoo.space import write_space

    monkeypatch.chdir(tmp_path)  # `python -m demo` offers synthetic examples, generated under the working folder
    launched = []
    monkeypatch.setattr(gr.Blocks, "launch", lambda self, *a, **k: launched.append((self, k.get("max_file_size"))))
    main(get_args_parser().parse_args(["--weights", str(tmp_path / "none")]))
    app_module.demo.launch()
    space = write_space(tmp_path / "space", "org/demo", [str(trained_run["out"])])
    runpy.run_path(str(space / "app.py"), run_name="__main__")
    assert [size for _, size in launched] == [f"{MAX_FILE_MB}mb"] * 3
    assert all(blocks.delete_cache == DELETE_CACHE for blocks, _ in launched)


def test_space_specs_are_data_not_code(tmp_path):
    from zoo.space import write_space

    specs = ['"""; import os; os.system("x") #', "weights/a'b", "line\nbreak", "'''", "hf://org/run/resnet10t"]
    app = (write_space(tmp_path / "space", "org/demo", specs) / "app.py").read_text()
    tree = ast.parse(app)
    models = next(n.value for n in tree.body if isinstance(n, ast.Assign) and n.targets[0].id == "MODELS")
    assert ast.literal_eval(models) == specs
    assert ast.get_docstring(tree) and "os.system" not in ast.get_docstring(tree)
    imports = [n for n in ast.walk(tree) if isinstance(n, ast.Import | ast.ImportFrom)]
    assert [(type(n).__name__, getattr(n, "module", None)) for n in imports] == [("ImportFrom", "demo.app")]
    calls = {ast.unparse(n.func) for n in ast.walk(tree) if isinstance(n, ast.Call)}
    assert calls == {"build_demo", "MemberPool.from_specs", "demo.launch"}
