"""Hub I/O without the network: local from_pretrained, the real cache layout offline, a recorded push, the card."""

import hashlib
import io
import json
import os
import shutil
from pathlib import Path

import pytest
import yaml
from conftest import TINY, run_script
from huggingface_hub import ModelCard, scan_cache_dir, snapshot_download
from huggingface_hub.repocard_data import model_index_to_eval_results

from zoo.hub import PushError, PushOptions, push_run
from zoo.members import WEIGHTS, download_members
from zoo.model import BoneClassifier
from zoo.run import SALT_FILE

REPO = "bone-zoo-tests/tiny-zoo"
COMMIT = "0123456789abcdef0123456789abcdef01234567"


@pytest.fixture(scope="module")
def run(trained_run):
    assert trained_run["proc"].returncode == 0
    return trained_run


def make_hub_cache(files: dict[str, bytes], cache: Path, repo_id: str = REPO) -> Path:
    """The Hub cache layout for one commit of repo_id: blobs by sha256, a snapshot of symlinks, refs/main."""
    repo = cache / f"models--{repo_id.replace('/', '--')}"
    snap = repo / "snapshots" / COMMIT
    for rel, data in sorted(files.items()):
        blob = repo / "blobs" / hashlib.sha256(data).hexdigest()
        blob.parent.mkdir(parents=True, exist_ok=True)
        blob.write_bytes(data)
        target = snap / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        target.symlink_to(os.path.relpath(blob, target.parent))
    (repo / "refs").mkdir(parents=True, exist_ok=True)
    (repo / "refs" / "main").write_text(COMMIT)
    return repo


def pushed_files(run_dir: Path, repo_id: str = REPO, **kw) -> tuple[dict[str, bytes], "RecordingHfApi"]:
    """What push_run uploads for ``run_dir`` (through the recording double): path in repo -> bytes."""
    api = RecordingHfApi()
    push_run(run_dir, repo_id, PushOptions(**kw), api=api, say=lambda m: None)
    (commit,) = [c for c in api.calls if c[0] == "create_commit"]
    return commit[2]["files"], api


@pytest.fixture(scope="module")
def hub_cache(run, tmp_path_factory):
    """The Hub cache holding exactly what a push of the run uploads (and those files as a plain folder)."""
    files, _ = pushed_files(run["out"])
    run_dir = tmp_path_factory.mktemp("pushed") / "weights"
    for rel, data in files.items():
        (run_dir / rel).parent.mkdir(parents=True, exist_ok=True)
        (run_dir / rel).write_bytes(data)
    cache = tmp_path_factory.mktemp("hf-cache")
    make_hub_cache(files, cache)
    return {"cache": cache, "run_dir": run_dir}


def test_from_pretrained_local_folder(run):
    m = BoneClassifier.from_pretrained(str(run["out"] / TINY[0]))
    assert m.backbone_name == TINY[0] and not m.training


def test_offline_download_through_the_real_cache_layout(hub_cache, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_OFFLINE", True)
    info = scan_cache_dir(hub_cache["cache"])  # the library recognises the layout
    (repo,) = info.repos
    assert repo.repo_id == REPO and {r.commit_hash for r in repo.revisions} == {COMMIT}
    path = snapshot_download(REPO, cache_dir=hub_cache["cache"])
    assert Path(path).name == COMMIT
    folders = download_members(REPO, cache_dir=hub_cache["cache"])
    assert [f.name for f in folders] == sorted(TINY)
    only = download_members(f"{REPO}/{TINY[1]}", cache_dir=hub_cache["cache"])
    assert [f.name for f in only] == [TINY[1]]
    from zoo.ensemble import MemberError

    with pytest.raises(MemberError, match="not in the local Hub cache"):
        download_members("someone/else", cache_dir=hub_cache["cache"])


def test_predict_hf_models_offline_matches_the_run_folder(run, hub_cache, tmp_path):
    env = {"HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": str(hub_cache["cache"])}
    a = run_script("predict.py", "--data", run["data"], "--models", f"hf://{REPO}", "-output", tmp_path / "hub.csv",
                   "--quiet", cwd=tmp_path, env=env)
    assert a.returncode == 0, a.stderr
    b = run_script("predict.py", "--data", run["data"], "--models", run["out"], "-output", tmp_path / "run.csv",
                   "--quiet", cwd=tmp_path)
    assert b.returncode == 0, b.stderr
    assert (tmp_path / "hub.csv").read_bytes() == (tmp_path / "run.csv").read_bytes()
    # `hf download ORG/NAME --local-dir weights/` gives the snapshot's files as plain files: same CSV
    local = tmp_path / "weights"
    shutil.copytree(Path(hub_cache["cache"]) / f"models--{REPO.replace('/', '--')}" / "snapshots" / COMMIT, local)
    c = run_script("predict.py", "--data", run["data"], "-output", tmp_path / "local.csv", "--quiet", cwd=tmp_path)
    assert c.returncode == 0, c.stderr
    assert (tmp_path / "local.csv").read_bytes() == (tmp_path / "run.csv").read_bytes()


class RecordingHfApi:
    """Test double of HfApi that records calls (a wiring test: it checks what push_run asks of the Hub client,
    not the Hub). ``public`` names repos that already exist and are public."""

    def __init__(self, public: tuple[str, ...] = ()):
        self.calls = []
        self.private = {r: False for r in public}

    def create_repo(self, repo_id, **kw):
        self.calls.append(("create_repo", repo_id, kw))
        self.private.setdefault(repo_id, bool(kw.get("private")))

    def repo_info(self, repo_id, **kw):
        return type("RepoInfo", (), {"private": self.private[repo_id]})()

    def create_branch(self, repo_id, **kw):
        self.calls.append(("create_branch", repo_id, kw))

    def upload_folder(self, **kw):
        import fnmatch

        root = Path(kw["folder_path"])
        files = sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file())
        allowed = [f for f in files if any(fnmatch.fnmatch(f, p) for p in kw["allow_patterns"])
                   and not any(fnmatch.fnmatch(f, p) for p in kw["ignore_patterns"])]
        self.calls.append(("upload_folder", kw["repo_id"], {**kw, "files": allowed}))
        return type("CommitInfo", (), {"commit_url": f"https://hub.example/{kw['repo_id']}/commit/1"})()

    def create_commit(self, repo_id, operations, **kw):
        files = {}
        for op in operations:  # what would go over the wire: the bytes of each file
            src = op.path_or_fileobj
            files[op.path_in_repo] = src if isinstance(src, bytes) else Path(src).read_bytes()
        self.calls.append(("create_commit", repo_id, {**kw, "files": files}))
        return type("CommitInfo", (), {"commit_url": f"https://hub.example/{repo_id}/commit/1"})()


def test_push_run_wiring(run, tmp_path):
    """Wiring test with a recording HfApi double: one repo, the branch, one commit with every member's files."""
    run_dir = tmp_path / "weights"
    shutil.copytree(run["out"], run_dir)
    (run_dir / TINY[0] / "checkpoint").mkdir()
    (run_dir / TINY[0] / "checkpoint" / "last.safetensors").write_bytes(b"x")
    api = RecordingHfApi()
    url = push_run(run_dir, REPO, PushOptions(private=True, revision="v1"), api=api)
    assert url.endswith("/commit/1")
    kinds = [c[0] for c in api.calls]
    assert kinds == ["create_repo", "create_branch", "create_commit"]
    assert api.calls[0][2]["private"] is True and api.calls[1][2]["branch"] == "v1"
    up = api.calls[2][2]
    assert up["revision"] == "v1" and "2 member(s)" in up["commit_message"]
    for n in TINY:
        assert {f"{n}/model.safetensors", f"{n}/config.json", f"{n}/README.md"} <= set(up["files"])
        assert up["files"][f"{n}/model.safetensors"] == (run_dir / n / "model.safetensors").read_bytes()
    assert {"README.md", "leaderboard.csv", "leaderboard.md", "roc.png"} <= set(up["files"])
    assert not any("checkpoint" in f or f.startswith(".") or "/." in f for f in up["files"])


def _tree(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_push_is_private_by_default_names_no_patient_and_rewrites_nothing(run, tmp_path):
    """What a push uploads contains no study id, no absolute local path and nothing a symlink points to outside the
    run; the repo is created private unless --public; the local run folder is byte for byte as it was."""
    import pandas as pd

    run_dir = tmp_path / "weights"
    shutil.copytree(run["out"], run_dir)
    cfg_file = run_dir / TINY[0] / "config.json"
    cfg = json.loads(cfg_file.read_text())
    secret_weights = tmp_path / "private-imagenet" / f"{TINY[0]}.safetensors"
    cfg["training"]["pretrained_weights"] = str(secret_weights)  # what --pretrained-weights records
    cfg_file.write_text(json.dumps(cfg))
    outside = tmp_path / "outside.txt"
    outside.write_text("PATIENT DATA that must stay here")
    (run_dir / TINY[1] / "curves.png").unlink()
    (run_dir / TINY[1] / "curves.png").symlink_to(outside)  # a symlink out of the run
    (run_dir / "leaderboard.md").unlink()
    (run_dir / "leaderboard.md").symlink_to(outside)
    (run_dir / SALT_FILE).write_text("ab" * 32)
    before = _tree(run_dir)
    ids = set()
    for n in TINY:
        ids |= set(pd.read_csv(run_dir / n / "val_predictions.csv", dtype={"id": str})["id"])
    assert ids
    notes = []
    api = RecordingHfApi()
    push_run(run_dir, REPO, api=api, say=notes.append)
    assert api.calls[0][0] == "create_repo" and api.calls[0][2]["private"] is True  # private by default
    files = api.calls[-1][2]["files"]
    assert f"{TINY[1]}/curves.png" not in files and "leaderboard.md" not in files
    assert sum("symlink out of the run folder" in n for n in notes) == 2
    assert SALT_FILE not in files and not any(SALT_FILE in f for f in files)
    texts = {rel: data.decode("utf-8", "replace") for rel, data in files.items()}
    for rel, text in texts.items():
        assert "PATIENT DATA" not in text, rel
        assert str(tmp_path) not in text and str(run["data"]) not in text and str(Path.home()) not in text, rel
        assert not any(sid in text for sid in ids if len(sid) > 3), rel
    pushed_cfg = json.loads(files[f"{TINY[0]}/config.json"])
    assert pushed_cfg["training"]["pretrained_weights"] == secret_weights.name
    from zoo.hub import pseudonyms

    names = pseudonyms(ids, bytes.fromhex("ab" * 32))
    for n in TINY:  # pseudonyms, one per study, the same across members: the salted hash of each id (no rank)
        local = pd.read_csv(run_dir / n / "val_predictions.csv", dtype={"id": str})
        pushed = pd.read_csv(io.BytesIO(files[f"{n}/val_predictions.csv"]), dtype={"id": str})
        assert len(pushed) == len(local) and pushed["id"].is_unique
        assert (pushed.drop(columns="id") == local.drop(columns="id")).all().all()
        assert list(pushed["id"]) == [names[i] for i in local["id"]]
    assert _tree(run_dir) == before  # push only reads the run folder
    api = RecordingHfApi()
    push_run(run_dir, REPO, PushOptions(private=False, include_study_ids=True), api=api, say=notes.append)
    assert api.calls[0][2]["private"] is False
    assert set(pd.read_csv(io.BytesIO(api.calls[-1][2]["files"][f"{TINY[0]}/val_predictions.csv"]),
                           dtype={"id": str})["id"]) <= ids
    with pytest.raises(PushError, match="PUBLIC"):  # an existing public repo is not published to by default
        push_run(run_dir, REPO, api=RecordingHfApi(public=(REPO,)), say=notes.append)


def test_pushed_pseudonyms_are_stable_per_run_and_unlinkable_without_the_salt(run, tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    for d, salt in ((a, "01" * 32), (b, "02" * 32)):
        shutil.copytree(run["out"], d)
        (d / SALT_FILE).write_text(salt)
    first, _ = pushed_files(a)
    again, _ = pushed_files(a)
    other, _ = pushed_files(b)
    rel = f"{TINY[0]}/val_predictions.csv"
    assert first[rel] == again[rel]  # the same run pushes the same pseudonyms
    assert not set(pd_ids(first[rel])) & set(pd_ids(other[rel]))  # another salt: no hash in common


def test_a_pseudonym_is_the_salted_hash_of_its_id_alone():
    """No rank among the run's ids (which leaked their order): a study's pseudonym is the same whatever else the run
    holds, and the pseudonyms' order is not the ids' order."""
    import re

    from zoo.hub import pseudonyms

    ids = [f"patient{i:05d}" for i in range(200)]
    names = pseudonyms(ids, b"s" * 32)
    assert pseudonyms(["patient00007"], b"s" * 32)["patient00007"] == names["patient00007"]
    assert all(re.fullmatch(r"[0-9a-f]{16}", v) for v in names.values())
    assert sorted(names, key=names.get) != sorted(ids)


def test_ensemble_fitting_does_not_depend_on_how_studies_are_named(tmp_path):
    """The validation rows the combiners and calibrations fit on come in the same order with real ids and with
    pushed pseudonyms, so the fitted ensemble gives the same scores."""
    import numpy as np
    import pandas as pd

    from zoo.ensemble import Ensemble
    from zoo.loader import Member

    rng = np.random.default_rng(0)
    ids = [f"patient{i:05d}" for i in range(60)]
    labels = rng.integers(0, 2, len(ids))
    names = {i: hashlib.sha256(i.encode()).hexdigest()[:16] for i in ids}  # hashed: another order than the ids'
    runs = {}
    for kind in ("real", "hashed"):
        members = []
        for k, name in enumerate(("a", "b")):
            folder = BoneClassifier("resnet10t", img_size=32, head_hidden=[8]).save_member(tmp_path / kind / name)
            probs = np.clip(labels * 0.3 + np.random.default_rng(k).random(len(ids)) * 0.7, 0, 1)
            df = pd.DataFrame({"id": ids, "label": labels, "prob": probs})
            if kind == "hashed":
                df = df.assign(id=df["id"].map(names))
            df.to_csv(folder / "val_predictions.csv", index=False)
            members.append(Member(name, folder))
        runs[kind] = Ensemble(members, "auto")
    real, hashed = (runs[k].validation_studies().drop(columns="id") for k in ("real", "hashed"))
    pd.testing.assert_frame_equal(real, hashed)
    study = pd.DataFrame({"a": [0.2, 0.7, 0.55], "b": [0.3, 0.8, 0.4]})
    np.testing.assert_allclose(runs["real"].calibrate(study.assign(ensemble=runs["real"].combine(study)))
                               .studies["ensemble"], runs["hashed"].calibrate(
                                   study.assign(ensemble=runs["hashed"].combine(study))).studies["ensemble"])


def pd_ids(data: bytes) -> list[str]:
    import pandas as pd

    return pd.read_csv(io.BytesIO(data), dtype={"id": str})["id"].tolist()


def test_push_cli_help(tmp_path):
    import subprocess
    import sys

    out = subprocess.run([sys.executable, "-m", "zoo", "push", "--help"], capture_output=True, text=True).stdout
    assert "--private" in out and "--revision" in out and "repo_id" in out
    assert "--public" in out and "--include-study-ids" in out


def test_model_cards_parse_and_their_metadata_validates(hub_cache):
    run_dir = hub_cache["run_dir"]
    for n in TINY:
        card = ModelCard.load(run_dir / n / "README.md")
        meta = card.data.to_dict()
        assert meta["library_name"] == "bone-zoo" and meta["pipeline_tag"] == "image-classification"
        assert meta["license"] == "apache-2.0" and "bone-zoo" in meta["tags"]
        name, results = model_index_to_eval_results(meta["model-index"])
        auc = next(r for r in results if r.metric_type == "roc_auc")
        assert auc.dataset_split == "validation" and 0.5 < auc.metric_value <= 1
        text = card.text
        assert "not a medical device" in text and "## Training recipe" in text and REPO in text
        assert "from_pretrained" in text
        yaml.safe_load(card.content.split("---")[1])
    root = ModelCard.load(run_dir / "README.md")
    assert root.data.to_dict()["library_name"] == "bone-zoo" and "hf download" in root.text


# -- download only member files (issue 19.3) ------------------------------------------------------------------------
class ListingHfApi:
    """Test double of HfApi for a repo held in a local folder: lists its files."""

    def __init__(self, repo: Path, sizes: dict | None = None, extra: dict | None = None):
        self.repo, self.sizes, self.extra = repo, sizes if sizes is not None else {}, extra if extra is not None else {}

    def list_repo_files(self, repo_id, revision=None, repo_type=None):
        return sorted(p.relative_to(self.repo).as_posix() for p in self.repo.rglob("*") if p.is_file())

    def list_repo_tree(self, repo_id, revision=None, repo_type=None, recursive=False, **kw):
        """As HfApi's: RepoFile-like entries (path, size) and folders (size None); ``sizes`` overrides what a file
        claims, ``extra`` adds listed names that are no file here."""
        Entry = type("Entry", (), {})  # noqa: N806
        for p in sorted(self.repo.rglob("*")):
            e = Entry()
            e.path = p.relative_to(self.repo).as_posix()
            e.size = self.sizes.get(e.path, p.stat().st_size) if p.is_file() else None
            yield e
        for path, size in self.extra.items():
            e = Entry()
            e.path, e.size = path, size
            yield e


@pytest.fixture
def hostile_repo(tmp_path, monkeypatch):
    """A Hub repo (a local folder) with two members among other things, and a snapshot_download double that copies
    what its allow_patterns select (huggingface_hub's own filter) and records it."""
    from huggingface_hub.utils import filter_repo_objects

    repo = tmp_path / "repo"
    for name in ("m1", "m2", "deep/m3"):
        BoneClassifier("resnet10t", img_size=32, head_hidden=[8]).save_member(repo / name)
    (repo / "m1" / "val_predictions.csv").write_text("id,label,prob\na,1,0.9\n")
    (repo / "m1" / "checkpoint").mkdir()
    (repo / "m1" / "checkpoint" / "last.safetensors").write_bytes(b"x" * 1000)
    (repo / "README.md").write_text("run card")
    (repo / "junk").mkdir()
    (repo / "junk" / "huge.bin").write_bytes(b"\0" * 10_000)
    (repo / "junk" / "config.json").write_text("{}")  # no weights beside it: not a member
    (repo / "data.csv").write_text("id\n")
    downloaded: list[str] = []

    def fake_snapshot_download(repo_id, revision=None, cache_dir=None, token=None, allow_patterns=None, **kw):
        files = ListingHfApi(repo).list_repo_files(repo_id)
        snap = tmp_path / "snapshot"
        for rel in filter_repo_objects(files, allow_patterns=allow_patterns):
            downloaded.append(rel)
            (snap / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(repo / rel, snap / rel)
        return str(snap)

    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_OFFLINE", False)
    monkeypatch.setattr("huggingface_hub.snapshot_download", fake_snapshot_download)
    sizes, extra = {}, {}  # what the listing claims beyond the files (set by a test)
    monkeypatch.setattr("huggingface_hub.HfApi", lambda token=None: ListingHfApi(repo, sizes, extra))
    return {"repo": repo, "downloaded": downloaded, "sizes": sizes, "extra": extra}


def test_a_repo_without_a_member_folder_is_listed_and_only_member_files_are_downloaded(hostile_repo):
    folders = download_members("org/run")
    assert [f.name for f in folders] == ["m1", "m2"]
    member = {"model.safetensors", "config.json", "README.md"}
    assert sorted(hostile_repo["downloaded"]) == sorted(
        [f"m1/{f}" for f in member | {"val_predictions.csv"}] + [f"m2/{f}" for f in member])


def test_a_member_sub_folder_downloads_that_member_only(hostile_repo):
    (folder,) = download_members("org/run/deep/m3")
    assert folder.name == "m3"
    assert sorted(hostile_repo["downloaded"]) == ["deep/m3/README.md", "deep/m3/config.json",
                                                  "deep/m3/model.safetensors"]


def test_a_repo_without_members_downloads_nothing(hostile_repo):
    from zoo.members import MemberError

    with pytest.raises(MemberError, match="holds no bone-zoo member"):
        download_members("org/run/junk")
    assert hostile_repo["downloaded"] == []


@pytest.mark.parametrize("path, size, says", [
    ("m1/model.safetensors", 3 * 2**30, r"m1/model.safetensors is 3072 MB, over the 2048 MB"),
    ("m2/val_predictions.csv", 60 * 2**20, r"m2/val_predictions.csv is 60 MB, over the 50 MB"),
    ("m2/config.json", 51 * 2**20, r"m2/config.json is 51 MB, over the 50 MB"),
])
def test_a_member_file_over_its_size_bound_is_refused_before_any_download(hostile_repo, path, size, says):
    from zoo.members import MemberError

    if not (hostile_repo["repo"] / path).exists():  # listed, as on the Hub, though the double holds no such file
        hostile_repo["extra"][path] = size
    hostile_repo["sizes"][path] = size
    with pytest.raises(MemberError, match=says):
        download_members("org/run")
    assert hostile_repo["downloaded"] == []


def test_a_huge_file_outside_the_members_is_not_refused_nor_downloaded(hostile_repo):
    hostile_repo["sizes"]["junk/huge.bin"] = 100 * 2**30
    assert [f.name for f in download_members("org/run")] == ["m1", "m2"]
    assert not any(f.startswith("junk/") for f in hostile_repo["downloaded"])


@pytest.mark.parametrize("name", ["../outside/model.safetensors", "/etc/passwd", "m1/../../x.json", "C:/x/config.json"])
def test_a_repo_naming_a_path_outside_itself_is_refused(hostile_repo, name):
    from zoo.members import MemberError

    hostile_repo["extra"][name] = 10
    with pytest.raises(MemberError, match="a path outside the repo; nothing downloaded"):
        download_members("org/run")
    assert hostile_repo["downloaded"] == []


def test_from_pretrained_of_a_hub_id_lists_sizes_first(hostile_repo, monkeypatch):
    import zoo.model
    from zoo.members import MemberError

    repo = hostile_repo["repo"] / "m2"
    monkeypatch.setattr("huggingface_hub.HfApi", lambda token=None: ListingHfApi(repo, {WEIGHTS: 3 * 2**30}))
    monkeypatch.setattr("huggingface_hub.snapshot_download", lambda *a, **k: pytest.fail("downloaded past the bound"))
    with pytest.raises(MemberError, match="model.safetensors is 3072 MB"):  # the mixin's from_pretrained ends here
        zoo.model.BoneClassifier._from_pretrained(model_id="org/one-member", revision=None, cache_dir=None,
                                                  force_download=False, local_files_only=False, token=None)


def test_a_push_uploads_leaderboard_md_as_written_and_renders_the_run_card_from_the_members(tmp_path):
    """A push uploads RUN/leaderboard.md as the run wrote it; the run card's table is rendered at push time from the
    members, as before issue 20 (the review of #20: a stale or missing leaderboard.md gave a wrong card; see
    tests/test_review20.py)."""
    from zoo.hub import plan_push

    run_dir = tmp_path / "run"
    BoneClassifier("resnet10t", img_size=32, head_hidden=[8]).save_member(run_dir / "m1")  # not finished
    (run_dir / "leaderboard.md").write_text("| member | val_auc |\n|---|---|\n| m1 | 0.777 (as written) |\n")
    card = plan_push(run_dir, REPO).files["README.md"].decode()
    assert "0.777 (as written)" not in card and "(no finished members)" in card
    assert plan_push(run_dir, REPO).files["leaderboard.md"] == (run_dir / "leaderboard.md").resolve()
