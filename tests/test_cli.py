"""The installed commands (bone-zoo ...) and the Hugging Face Space they write (the import graph: test_imports)."""

import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import ROOT, TINY, free_port, run_script

from zoo.cli import COMMANDS
from zoo.cli import main as bone_zoo


@pytest.mark.slow
def test_every_command_has_help_through_the_installed_script():
    exe = Path(sys.executable).parent / "bone-zoo"
    if not exe.exists():
        pytest.skip("bone-zoo script not installed (pip install -e .)")
    for command in COMMANDS:  # one subprocess per command: the smoke test
        proc = subprocess.run([str(exe), command, "--help"], capture_output=True, text=True, timeout=120)
        assert proc.returncode == 0 and f"bone-zoo {command}" in proc.stdout, (command, proc.stderr[-500:])
    proc = subprocess.run([str(exe), "predic"], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and "Did you mean `bone-zoo predict`" in proc.stderr


@pytest.fixture(scope="module")
def run(trained_run):
    assert trained_run["proc"].returncode == 0, trained_run["proc"].stderr[-2000:]
    return trained_run


def test_bone_zoo_predict_in_process_equals_the_script(run, tmp_path):
    """The subprocess smoke test of predict.py: a real process gives the same bytes as the in-process call."""
    args = ["--data", str(run["data"]), "--models", str(run["out"]), "--quiet"]
    assert bone_zoo(["predict", *args, "-output", str(tmp_path / "a.csv")]) == 0
    p = run_script("predict.py", *args, "--output", tmp_path / "b.csv", cwd=tmp_path, subprocess_run=True)
    assert p.returncode == 0, p.stderr
    assert (tmp_path / "a.csv").read_bytes() == (tmp_path / "b.csv").read_bytes()
    assert bone_zoo(["list"]) == 0 and bone_zoo([]) == 2


def test_model_cards_usage_lines_name_installed_commands(run):
    from zoo.card import member_card, run_card
    from zoo.members import read_member_config

    text = str(member_card(read_member_config(run["out"] / TINY[0]), repo_id="org/run")) + str(
        run_card("org/run", "|x|", TINY))
    commands = re.findall(r"(?:^|`|&& )bone-zoo ([a-z]+)", text, re.M)  # usages, not titles
    assert {"predict", "demo", "space"} <= set(commands)
    assert set(commands) <= set(COMMANDS), commands
    assert "bone-zoo predict --models hf://org/run" in text and "python predict.py" not in text


@pytest.mark.slow
def test_space_is_written_pushed_and_serves(run, tmp_path):
    from huggingface_hub import SpaceCard
    from test_hub import RecordingHfApi

    from zoo.space import push_space

    shutil.copytree(run["out"], tmp_path / "run")
    out = tmp_path / "space"
    assert bone_zoo(["space", "org/bone-demo", "--models", str(tmp_path / "run"), "--out", str(out)]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["README.md", "app.py", "requirements.txt"]
    card = SpaceCard.load(out / "README.md")
    assert card.data.sdk == "gradio" and card.data.app_file == "app.py" and card.data.sdk_version
    assert "bone-zoo" in (out / "requirements.txt").read_text()
    api = RecordingHfApi()
    push_space(out, "org/bone-demo", private=True, api=api)
    assert [c[0] for c in api.calls] == ["create_repo", "upload_folder"]
    assert api.calls[0][2]["repo_type"] == "space" and api.calls[0][2]["space_sdk"] == "gradio"
    assert api.calls[1][2]["files"] == ["README.md", "app.py", "requirements.txt"]
    port = free_port()
    env = {**os.environ, "GRADIO_SERVER_PORT": str(port), "GRADIO_SERVER_NAME": "127.0.0.1",
           "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen([sys.executable, "app.py"], cwd=out, env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)
    try:
        from gradio_client import Client, handle_file

        deadline, client = time.time() + 120, None
        while client is None and time.time() < deadline and proc.poll() is None:
            try:
                client = Client(f"http://127.0.0.1:{port}/", verbose=False)
            except Exception:
                time.sleep(0.5)
        assert client is not None, proc.stderr.read()[-2000:] if proc.poll() is not None else "no answer"
        image = next((run["data"] / "test").iterdir())
        md, *_ = client.predict([handle_file(str(image))], TINY, "Grad-CAM", "mean", api_name="/analyse")
        assert "P(abnormal)" in md
    finally:
        proc.terminate()
        proc.wait(timeout=30)
