"""predict.py at scale (zoo.sharding): sharded over processes, chunked with a bounded decode window, resumable."""

import os
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
from conftest import ROOT, free_port, run_script

from zoo import ensemble as ensemble_module
from zoo.data import load_dataset


@pytest.fixture(scope="module")
def run(trained_run):
    assert trained_run["proc"].returncode == 0, trained_run["proc"].stderr[-2000:]
    return trained_run


def test_two_processes_write_the_one_process_csv_and_only_the_main_one_writes(run, tmp_path):
    """2 CPU processes (torchrun, gloo) on the members' exported graphs (backend auto): chunks shared out, gathered
    exactly once per image; the CSV equals the 1-process one and the main process alone prints and writes."""
    args = ["--data", run["data"], "--models", run["out"], "--evaluate"]
    one = run_script("predict.py", *args, "--output", tmp_path / "one" / "p.csv", "--quiet", cwd=tmp_path)
    assert one.returncode == 0, one.stderr
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-port", str(free_port()),
           str(ROOT / "predict.py"), *map(str, args), "--output", str(tmp_path / "two" / "p.csv"), "--device", "cpu",
           "--chunk-size", "16"]  # 88 test images: 6 chunks, 3 per process
    two = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=300,
                         env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert two.returncode == 0, two.stderr[-3000:]
    a, b = pd.read_csv(tmp_path / "one" / "p.csv"), pd.read_csv(tmp_path / "two" / "p.csv")
    assert a["id"].tolist() == b["id"].tolist() and b["id"].is_unique
    assert np.abs(a["label"].to_numpy() - b["label"].to_numpy()).max() <= 1e-6
    assert two.stderr.count("wrote ") == 2 and two.stderr.count("p.csv (40 studies)") == 1  # CSV line, report line
    assert two.stderr.count(": backend ") == 2  # one line per member, not per process
    assert two.stdout.count("| ensemble ") == 1  # the report's table, printed once
    assert sorted(f.name for f in (tmp_path / "two").iterdir()) == sorted(f.name for f in (tmp_path / "one").iterdir())
    assert not (tmp_path / "two" / "p.csv.parts").exists()  # removed after the CSV was written


class Interrupted(Exception):
    pass


def _count_chunks(monkeypatch, fail_after: int | None = None) -> list[int]:
    """Spy on the per-chunk scoring (Ensemble.predict_images) and on each decode (load_images): the list of image
    counts each was given; ``fail_after`` chunks done, the next one raises (a kill in the chunk loop)."""
    calls, decoded = [], []
    predict, load = ensemble_module.Ensemble.predict_images, ensemble_module.load_images

    def spy(self, images, *a, **k):
        if fail_after is not None and len(calls) == fail_after:
            raise Interrupted("killed")
        calls.append(len(images))
        return predict(self, images, *a, **k)

    def spy_load(paths, *a, **k):
        decoded.append(len(paths))
        return load(paths, *a, **k)

    monkeypatch.setattr(ensemble_module.Ensemble, "predict_images", spy)
    monkeypatch.setattr(ensemble_module, "load_images", spy_load)
    return calls, decoded


def test_resume_continues_an_interrupted_run_and_refuses_what_does_not_match(run, tmp_path, monkeypatch):
    """Torch backend, 3 chunks of 32 images: interrupted after 2 (one then damaged), --resume scores only the other
    2 and the CSV is the uninterrupted run's, byte for byte; a stale parts folder is never silently reused and a
    different prediction's is refused with what differs; every decode is one chunk, never the whole test set."""
    n_images = len(load_dataset(run["data"]).test)
    args = ["--data", run["data"], "--models", run["out"] / "regnetx_002", "--backend", "torch", "--chunk-size", "32",
            "--quiet"]
    with monkeypatch.context() as m:
        calls, decoded = _count_chunks(m)
        ref = run_script("predict.py", *args, "--output", tmp_path / "ref.csv", cwd=tmp_path)
        assert ref.returncode == 0, ref.stderr
    assert calls == [32, 32, n_images - 64] and max(decoded) <= 32  # a bounded decode window
    out = tmp_path / "p.csv"
    parts = tmp_path / "p.csv.parts"
    with monkeypatch.context() as m:
        _count_chunks(m, fail_after=2)
        killed = run_script("predict.py", *args, "--output", out, cwd=tmp_path)
    assert killed.returncode == 1 and "Interrupted" in killed.stderr and not out.exists()
    assert sorted(p.name for p in parts.glob("chunk-*.npz")) == ["chunk-000000.npz", "chunk-000001.npz"]

    again = run_script("predict.py", *args, "--output", out, cwd=tmp_path)  # no --resume: refused, nothing touched
    assert again.returncode == 2 and "--resume" in again.stderr and "remove the folder" in again.stderr
    assert len(list(parts.glob("chunk-*.npz"))) == 2 and not out.exists()
    other = run_script("predict.py", *args, "--output", out, "--resume", "--tta", cwd=tmp_path)
    assert other.returncode == 2 and "differs in tta" in other.stderr and f"remove {parts}" in other.stderr
    assert not out.exists()

    (parts / "chunk-000001.npz").write_bytes(b"torn")  # damaged: scored again, not trusted
    with monkeypatch.context() as m:
        calls, _ = _count_chunks(m)
        resumed = run_script("predict.py", *args, "--output", out, "--resume", cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr
    assert "1 of 3 chunk(s) were finished" in resumed.stderr
    assert calls == [32, n_images - 64]  # chunk 0 reused; 1 (damaged) and 2 scored
    assert out.read_bytes() == (tmp_path / "ref.csv").read_bytes()
    assert not parts.exists()


def test_resume_refuses_a_changed_graph_and_says_why_cams_change_the_backend(run, tmp_path, monkeypatch):
    """Interrupted on an exported graph (--backend auto), then the graph file changes (a re-export): --resume is
    refused (the backend's name alone was the same, so the old chunks were mixed with the new graph's). Adding
    --cam-dir on resume switches auto to torch: the refusal says so and why."""
    import shutil

    import onnx

    member = tmp_path / "m" / "regnetx_002"
    shutil.copytree(run["out"] / "regnetx_002", member)
    args = ["--data", run["data"], "--models", member, "--chunk-size", "32", "--quiet", "--output", tmp_path / "p.csv"]
    with monkeypatch.context() as m:
        _count_chunks(m, fail_after=1)
        killed = run_script("predict.py", *args, cwd=tmp_path)
    assert killed.returncode == 1 and "Interrupted" in killed.stderr
    backend = killed.stderr.split("regnetx_002: backend ")[1].split()[0]
    assert backend.startswith(("onnx", "openvino")), killed.stderr  # a graph backend (auto)
    cams = run_script("predict.py", *args, "--resume", "--cam-dir", tmp_path / "cams", cwd=tmp_path)
    assert cams.returncode == 2 and "differs in members" in cams.stderr
    assert f"backend {backend} -> torch (auto: CAMs need the PyTorch network)" in cams.stderr, cams.stderr
    for graph in member.glob("*.onnx"):  # exported again: same weights, another file
        g = onnx.load(str(graph))
        g.doc_string = "exported again"
        onnx.save(g, str(graph))
    again = run_script("predict.py", *args, "--resume", cwd=tmp_path)
    assert again.returncode == 2 and "graph_sha256 changed" in again.stderr, again.stderr
    assert not (tmp_path / "p.csv").exists()


def test_cams_are_written_chunk_by_chunk_from_the_chunks_cache_entries(run, tmp_path, monkeypatch):
    """--cam-dir after a chunked prediction decodes chunk by chunk (each chunk's path set: the cache entry its
    prediction filled), never the whole archive at once; the overlays are the ones a single chunk gives."""
    from PIL import Image

    n_images = len(load_dataset(run["data"]).test)
    args = ["--data", run["data"], "--models", run["out"] / "regnetx_002", "--quiet"]
    with monkeypatch.context() as m:
        _, decoded = _count_chunks(m)
        p = run_script("predict.py", *args, "--chunk-size", "16", "--cam-dir", tmp_path / "cams", "--output",
                       tmp_path / "p.csv", cwd=tmp_path)
        assert p.returncode == 0, p.stderr
    assert n_images > 32 and max(decoded) <= 16 and sum(decoded) == 2 * n_images  # predict's chunks, then the CAMs'
    one = run_script("predict.py", *args, "--chunk-size", str(n_images), "--cam-dir", tmp_path / "one", "--output",
                     tmp_path / "one.csv", cwd=tmp_path)
    assert one.returncode == 0, one.stderr
    files = sorted(f.name for f in (tmp_path / "one" / "regnetx_002").iterdir())
    assert len(files) == n_images and sorted(f.name for f in (tmp_path / "cams" / "regnetx_002").iterdir()) == files
    for f in files:
        a, b = (np.asarray(Image.open(tmp_path / d / "regnetx_002" / f), dtype=int) for d in ("cams", "one"))
        assert np.abs(a - b).max() <= 1, f


def test_misuse_is_refused_before_any_chunk_is_written(run, tmp_path):
    """A usage error (found before scoring) leaves no parts folder behind, so fixing it needs no --resume."""
    args = ["--data", run["data"], "--models", run["out"], "-output", tmp_path / "p.csv"]
    p = run_script("predict.py", *args, "--chunk-size", "0", cwd=tmp_path)
    assert p.returncode == 2 and "--chunk-size" in p.stderr and ">= 1" in p.stderr
    p = run_script("predict.py", *args, "--triage", "0.1", "--no-calibrate", "--chunk-size", "16", cwd=tmp_path)
    assert p.returncode == 2 and "drop --no-calibrate" in p.stderr
    assert not (tmp_path / "p.csv.parts").exists() and not (tmp_path / "p.csv").exists()


def test_an_error_on_one_process_is_printed_and_every_process_stops(run, tmp_path):
    """Under torchrun, a usage error on rank 1 only (its data folder missing on that node): its error line reaches
    the output (not silenced with the rest of a non-main process's output), the main process says it too, and both
    stop promptly with a failure (before: nothing printed, rank 0 killed by torchrun, or waiting in broadcast)."""
    script = tmp_path / "rankfail.py"
    script.write_text("import os, sys\nimport zoo.cli.predict as P\nfrom zoo.data import LayoutError\n"
                      "if os.environ.get('RANK') == '1':\n    def bad(*a, **k):\n"
                      "        raise LayoutError('rank-1-only: /data not mounted on this node')\n"
                      "    P.load_dataset = bad\n"
                      "sys.exit(P.main(P.get_args_parser().parse_args(sys.argv[1:])))\n")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-port", str(free_port()),
           str(script), "--data", str(run["data"]), "--models", str(run["out"]), "--output", str(tmp_path / "p.csv"),
           "--device", "cpu", "--quiet"]
    p = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=240,
                       env={**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)})
    assert p.returncode != 0
    assert "[rank 1] error: rank-1-only: /data not mounted" in p.stderr  # rank 1's own line
    assert "error: [rank 1] rank-1-only" in p.stderr  # the main process's, after the processes agreed
    assert not (tmp_path / "p.csv").exists() and not (tmp_path / "p.csv.parts").exists()


def test_a_chunk_failing_on_one_process_stops_every_process_and_resume_finishes(run, tmp_path):
    """Under torchrun, rank 1's second chunk raises (a disk error while scoring): every process stops after that
    round with the chunk and the rank named by the main process (before: rank 1 died with a traceback and rank 0
    was left in the gather until the launcher killed it, saying nothing of which chunk), the chunks finished so far
    stay in the parts folder, and --resume scores only the rest into the 1-process CSV."""
    args = ["--data", str(run["data"]), "--models", str(run["out"]), "--device", "cpu", "--quiet",
            "--chunk-size", "16"]  # 88 test images: 6 chunks; rank 1 scores 1, 3, 5
    one = run_script("predict.py", *args, "--output", tmp_path / "one.csv", cwd=tmp_path)
    assert one.returncode == 0, one.stderr
    script = tmp_path / "chunkfail.py"
    script.write_text("import os, sys\nimport zoo.cli.predict as P\nfrom zoo.ensemble import Ensemble\n"
                      "if os.environ.get('RANK') == '1' and os.environ.get('FAIL'):\n"
                      "    calls, real = [], Ensemble.predict_images\n"
                      "    def flaky(self, *a, **k):\n        calls.append(1)\n"
                      "        if len(calls) == 2:\n            raise OSError('rank-1 disk gone')\n"
                      "        return real(self, *a, **k)\n"
                      "    Ensemble.predict_images = flaky\n"
                      "if os.environ.get('RANK') == '1' and os.environ.get('REORDER'):\n"
                      "    real_chunked = P.predict_chunked\n"
                      "    P.predict_chunked = lambda ens, images, *a, **k: real_chunked(ens, images[::-1], *a, **k)\n"
                      "sys.exit(P.main(P.get_args_parser().parse_args(sys.argv[1:])))\n")
    out = tmp_path / "two.csv"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-port", str(free_port()),
           str(script), *args, "--output", str(out)]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    p = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=300, env={**env, "FAIL": "1"})
    assert p.returncode != 0 and not out.exists()
    assert "error: [rank 1] chunk 3 (images 48-63): OSError: rank-1 disk gone" in p.stderr, p.stderr[-3000:]
    assert "--resume" in p.stderr and "flaky" in (tmp_path / "two.csv.parts" / "error-rank1.txt").read_text()
    kept = sorted(f.name for f in (tmp_path / "two.csv.parts").glob("chunk-*.npz"))
    assert kept == [f"chunk-{i:06d}.npz" for i in (0, 1, 2)]  # round 0 both, round 1 rank 0's; nothing after
    cmd[cmd.index("--master-port") + 1] = str(free_port())
    p = subprocess.run([*cmd, "--resume"], cwd=tmp_path, capture_output=True, text=True, timeout=300, env=env)
    assert p.returncode == 0, p.stderr[-3000:]
    assert "--resume: 3 of 6 chunk(s) were finished" in p.stderr
    a, b = pd.read_csv(tmp_path / "one.csv"), pd.read_csv(out)
    assert a["id"].tolist() == b["id"].tolist()
    assert np.abs(a["label"].to_numpy() - b["label"].to_numpy()).max() <= 1e-6
    # rank 1 listing the images in another order: refused before any chunk (it would assemble wrong rows)
    cmd[cmd.index("--master-port") + 1] = str(free_port())
    out.unlink()
    p = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=300, env={**env, "REORDER": "1"})
    assert p.returncode != 0 and not out.exists()
    assert "[rank 1] lists other test images than the main process" in p.stderr, p.stderr[-3000:]
    assert not list((tmp_path / "two.csv.parts").glob("chunk-*.npz"))


def test_each_node_removes_its_own_chunks_once_the_csv_is_written(run, tmp_path):
    """Nodes without a shared file system (simulated: rank 1 writes its parts under another folder) each leave no
    parts folder behind after the main process wrote the CSV (before: the other nodes' chunk files stayed)."""
    script = tmp_path / "node2.py"
    script.write_text("import os, sys\nimport zoo.cli.predict as P\nargv = sys.argv[1:]\n"
                      "if os.environ.get('RANK') == '1':\n"
                      "    argv[argv.index('--output') + 1] = os.environ['NODE2_OUTPUT']\n"
                      "sys.exit(P.main(P.get_args_parser().parse_args(argv)))\n")
    node2 = tmp_path / "node2" / "p.csv"
    node2.parent.mkdir()
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-port", str(free_port()),
           str(script), "--data", str(run["data"]), "--models", str(run["out"]), "--output", str(tmp_path / "p.csv"),
           "--device", "cpu", "--quiet", "--chunk-size", "16"]
    p = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=300,
                       env={**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT), "NODE2_OUTPUT": str(node2)})
    assert p.returncode == 0, p.stderr[-3000:]
    assert (tmp_path / "p.csv").is_file() and not node2.exists()
    assert not (tmp_path / "p.csv.parts").exists() and not (tmp_path / "node2" / "p.csv.parts").exists()


def test_agree_names_the_ranks_that_failed():
    from zoo.sharding import Processes

    class Three(Processes):
        def gather(self, items):
            return [(0, None), (1, "no data"), (2, "no data")]

    assert Three(0, 3).agree(None) == "[ranks 1,2] no data"
    assert Processes().agree(None) is None and Processes().agree("x") == "x"


def test_a_parts_folder_appears_with_its_manifest_or_not_at_all(tmp_path, monkeypatch):
    """A kill between creating the parts folder and writing its manifest left a folder plain runs refused and
    --resume called unreadable: the manifest is written in a temporary folder renamed into place, and such an
    empty folder (left by older code) counts as absent."""
    import zoo.sharding as sharding

    parts, fp = tmp_path / "p.csv.parts", {"version": 0, "chunk_size": 4}

    def killed(*a, **k):
        raise KeyboardInterrupt

    with monkeypatch.context() as m:
        m.setattr(sharding, "write_text", killed)
        with pytest.raises(KeyboardInterrupt):
            sharding.open_parts(parts, fp, resume=False)
    assert list(tmp_path.iterdir()) == []  # no folder, no temporary left
    parts.mkdir()  # what older code left
    key = sharding.open_parts(parts, fp, resume=False)
    assert key == sharding.digest(fp) and sorted(p.name for p in parts.iterdir()) == ["manifest.json"]
    assert sharding.open_parts(parts, fp, resume=True) == key  # and it resumes
    with pytest.raises(sharding.PartsError, match="--resume"):
        sharding.open_parts(parts, fp, resume=False)


def _mapped_rss(path: str) -> int:
    """Bytes of ``path``'s memory maps resident in this process (/proc/self/smaps)."""
    total, inside = 0, False
    for line in open("/proc/self/smaps"):
        head = line.split()
        if head and "-" in head[0] and len(head) >= 5 and not head[0].endswith(":"):
            inside = len(head) >= 6 and os.path.realpath(head[-1]) == os.path.realpath(path)
        elif inside and line.startswith("Rss:"):
            total += int(head[1]) * 1024
    return total


@pytest.mark.skipif(not os.path.exists("/proc/self/smaps"), reason="needs Linux /proc")
def test_an_epoch_over_a_cache_entry_does_not_keep_its_pages_resident(synthetic_root, tmp_path):
    """Items read from a cache entry (training's and prediction's ArrayDataset) are read, not mapped, and decoded
    rows are written, not mapped: an epoch over a large entry, or its decoding, leaves none of its pages in the
    process's RSS (through the memory map they all stayed, so peak RSS grew with the dataset)."""
    from zoo.data import load_images
    from zoo.inference import ArrayDataset

    paths = sorted(str(p) for p in (synthetic_root / "train").rglob("*.png"))[:96]
    arr = load_images(paths, 128, tmp_path / "cache", quiet=True)
    entry = arr.array.data if hasattr(arr.array, "data") and hasattr(arr.array, "order") else arr.array
    ds = ArrayDataset(arr, np.arange(len(paths))[::-1])  # the shuffled order of an epoch
    items = np.stack([ds[i][0][0].numpy() for i in range(len(ds))])
    assert _mapped_rss(entry.filename) == 0  # read, not mapped
    every = np.array(arr.array)  # the same rows copied through the memory map, as the old dataset read them:
    assert _mapped_rss(entry.filename) >= 0.9 * entry.nbytes  # resident (the measure sees them)
    assert np.array_equal(items, every[ds.rows])

    with pytest.warns(UserWarning, match="over the"):  # decoded into a temporary mapped file, not cached
        big = load_images(paths, 128, tmp_path / "cache", quiet=True, max_gb=1e-6)
    assert _mapped_rss(big.array.filename) == 0  # written, not through the map (whose dirty pages stayed resident)
    assert np.array_equal(big.read(np.arange(len(paths))), every)


@pytest.mark.parametrize("damage", ["truncated", "zip header, garbage", "empty"])
def test_a_damaged_chunk_is_scored_again_not_an_error(tmp_path, damage):
    """A chunk file damaged on disk (a node crash on NFS, a bad disk) reads as absent, so --resume scores it again
    (before: a truncated zip raised BadZipFile, and every --resume failed on it again)."""
    from zoo.sharding import read_part, write_part

    path = tmp_path / "chunk-000000.npz"
    write_part(path, np.ones((4, 2)), {}, "k")
    assert read_part(path, "k", (4, 2))[0].shape == (4, 2)
    data = path.read_bytes()
    path.write_bytes({"truncated": data[: len(data) // 2], "zip header, garbage": b"PK\x03\x04" + b"\0" * 40,
                      "empty": b""}[damage])
    assert read_part(path, "k", (4, 2)) is None
