"""One verified load path: every way of loading a member checks its weights against config.json's hash (issue 18.7),
and a config.json whose sizes are not its weights' shapes (or are absurd) is refused before any module is built
(issue 19.3). Tiny members saved here (resnet10t, 32 px); no training, no network."""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import shutil
from pathlib import Path

import pytest
import torch

import zoo.model
from zoo.loader import load_model
from zoo.members import MemberError, ShapeMismatch, WeightsMismatch
from zoo.model import BoneClassifier

REPO = "bone-zoo-tests/one-member"
COMMIT = "fedcba9876543210fedcba9876543210fedcba98"


def _save(folder: Path, seed: int = 0, **kw) -> Path:
    torch.manual_seed(seed)
    args = {"backbone": "resnet10t", "img_size": 32, "head_hidden": [8], **kw}
    return BoneClassifier(**args).save_member(folder)


def _tamper(folder: Path) -> None:
    """Weights of the same shapes but other values over model.safetensors; config.json (and its hash) untouched."""
    other = _save(folder.parent / "other", seed=1)
    shutil.copy(other / "model.safetensors", folder / "model.safetensors")
    shutil.rmtree(other)


def _hub_cache(member: Path, cache: Path) -> Path:
    """The Hub cache layout of a one-member repo (files at the repo root): blobs by sha256, a snapshot of symlinks."""
    repo = cache / f"models--{REPO.replace('/', '--')}"
    snap = repo / "snapshots" / COMMIT
    snap.mkdir(parents=True)
    for f in member.iterdir():
        data = f.read_bytes()
        blob = repo / "blobs" / hashlib.sha256(data).hexdigest()
        blob.parent.mkdir(parents=True, exist_ok=True)
        blob.write_bytes(data)
        (snap / f.name).symlink_to(os.path.relpath(blob, snap))
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(COMMIT)
    return cache


def _export(folder: Path) -> tuple[int, str]:
    from zoo.cli import main

    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        code = main(["export", str(folder), "--onnx"])
    return code, err.getvalue()


def _demo_member(folder: Path):
    from demo.app import MemberPool

    return MemberPool({folder.name: folder}).member(folder.name)


ENTRY_POINTS = {
    "BoneClassifier.load": lambda f, cache: BoneClassifier.load(f),
    "BoneClassifier.from_pretrained(folder)": lambda f, cache: BoneClassifier.from_pretrained(str(f)),
    "BoneClassifier.from_pretrained(Hub id, offline cache)":
        lambda f, cache: BoneClassifier.from_pretrained(REPO, cache_dir=cache),
    "zoo.loader.load_model": lambda f, cache: load_model(f),
    "the demo's member pool": lambda f, cache: _demo_member(f),
}


@pytest.fixture
def offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_OFFLINE", True)


@pytest.mark.parametrize("entry", list(ENTRY_POINTS))
def test_every_entry_point_loads_an_intact_member(entry, tmp_path, offline):
    member = _save(tmp_path / "m")
    cache = _hub_cache(member, tmp_path / "hf-cache")
    got = ENTRY_POINTS[entry](member, cache)
    model = getattr(got, "model", got)  # the demo gives a Member
    assert model.weights_sha256 == json.loads((member / "config.json").read_text())["weights_sha256"]


@pytest.mark.parametrize("entry", list(ENTRY_POINTS))
def test_every_entry_point_refuses_tampered_weights(entry, tmp_path, offline):
    from demo.app import AnalysisError

    member = _save(tmp_path / "m")
    _tamper(member)
    cache = _hub_cache(member, tmp_path / "hf-cache")
    with pytest.raises((WeightsMismatch, MemberError, AnalysisError), match="is not the one its config.json names"):
        ENTRY_POINTS[entry](member, cache)


def test_export_refuses_tampered_weights_and_writes_nothing(tmp_path):
    member = _save(tmp_path / "m")
    _tamper(member)
    code, err = _export(member)
    assert code == 2 and "is not the one its config.json names" in err and "Traceback" not in err
    assert not (member / "model.onnx").exists()


# -- shapes before allocation (issue 19.3) ------------------------------------------------------------------------
def _edit_config(folder: Path, **values) -> None:
    """What an attacker (or a hand edit) does: change config.json; the weights' hash in it stays valid."""
    cfg = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**cfg, **values}))


def _forbid_allocation(monkeypatch) -> None:
    """From here on, building a backbone or a head off the meta device (a real allocation) fails the test."""
    real_backbone, real_head = zoo.model.create_backbone, zoo.model.MLPHead

    def on_meta_only(build, what):
        def wrapped(*a, **k):
            assert torch.get_default_device().type == "meta", f"a {what} was allocated before the shapes were checked"
            return build(*a, **k)

        return wrapped

    monkeypatch.setattr(zoo.model, "create_backbone", on_meta_only(real_backbone, "backbone"))
    monkeypatch.setattr(zoo.model, "MLPHead", on_meta_only(real_head, "head"))


@pytest.mark.parametrize("values, says", [
    ({"head_hidden": [200000, 20000]}, r"head_hidden = 200000 is not an integer in \[1, 8192\]"),  # ~16 GB
    ({"head_hidden": [4096, 4096]}, r"head_hidden \[4096, 4096\] asks for head widths \[4096, 4096, 1\], "
                                    r"the weights hold 512x8 -> 8x1"),
    ({"head_hidden": [8, 8]}, r"asks for head widths \[8, 8, 1\]"),
    ({"img_size": 10 ** 6}, r"img_size = 1000000 is not an integer"),
    ({"img_size": 2048}, r"img_size = 2048 is not an integer in \[8, 1024\]"),  # 16x the CAM work of 512 px
    ({"head_hidden": list(range(1, 40))}, r"at most 4 widths"),
])
def test_config_sizes_that_are_not_the_weights_are_refused_before_building(values, says, tmp_path, monkeypatch):
    member = _save(tmp_path / "m")
    _edit_config(member, **values)
    _forbid_allocation(monkeypatch)
    with pytest.raises(ShapeMismatch, match=says) as info:
        BoneClassifier.load(member)
    assert str(member) in str(info.value)
    with pytest.raises(MemberError, match=says):
        load_model(member)


def test_vit_image_size_is_checked_against_its_position_embeddings(tmp_path, monkeypatch):
    """A ViT records its image size in its weights (position embeddings): a config asking for another is refused,
    naming the tensor, with the network built on the meta device only."""
    member = BoneClassifier("vit_small_patch16_224", img_size=32, head_hidden=[8]).save_member(tmp_path / "vit")
    _edit_config(member, img_size=64)
    _forbid_allocation(monkeypatch)
    with pytest.raises(ShapeMismatch, match=r"backbone.pos_embed: the config builds \(1, 17, 384\), the weights "
                                            r"hold \(1, 5, 384\)"):
        BoneClassifier.load(member)


def test_a_matching_config_still_loads(tmp_path):
    member = _save(tmp_path / "m")
    model = BoneClassifier.load(member)
    assert model.head_hidden == [8] and model.img_size == 32 and not model.training


def _drop_hash(folder: Path) -> Path:
    """config.json as an older bone-zoo wrote it: no weights_sha256."""
    cfg = json.loads((folder / "config.json").read_text())
    del cfg["weights_sha256"]
    (folder / "config.json").write_text(json.dumps(cfg))
    return folder


@pytest.mark.parametrize("entry", ["BoneClassifier.from_pretrained(Hub id, offline cache)", "hf:// member"])
def test_a_hub_member_without_a_weights_hash_is_refused(entry, tmp_path, offline):
    from zoo.members import resolve_member_dirs

    cache = _hub_cache(_drop_hash(_save(tmp_path / "m")), tmp_path / "hf-cache")
    with pytest.raises(WeightsMismatch, match="names no weights_sha256.*refused"):
        if entry == "hf:// member":
            load_model(resolve_member_dirs([f"hf://{REPO}"], cache_dir=str(cache))[0])
        else:
            ENTRY_POINTS[entry](None, cache)


def test_a_local_member_without_a_weights_hash_loads_with_a_loud_warning(tmp_path):
    from zoo.members import UnverifiedWeights

    member = _drop_hash(_save(tmp_path / "m"))
    with pytest.warns(UnverifiedWeights, match="names no weights_sha256") as caught:
        model = load_model(member)
    message = str(caught[0].message)
    assert str(member) in message and "save_member" in message and "UNCHECKED" in message
    assert model.weights_sha256 is not None


# -- a header that claims shapes its file does not hold (issue 19, review) -------------------------------------------
def _header_bomb(folder: Path, head_hidden: list[int]) -> Path:
    """What an attacker writes: a real resnet10t member's config.json with a wide head, and a model.safetensors
    whose header copies the shapes that config builds but whose offsets are all [0, 0] (a few KB on disk); the hash
    in config.json is the file's, so every check that trusts the header passes."""
    member = _save(folder)
    with torch.device("meta"):
        shapes = BoneClassifier("resnet10t", img_size=32, head_hidden=head_hidden).state_dict()
    dtypes = {torch.float32: "F32", torch.int64: "I64"}
    header = json.dumps({k: {"dtype": dtypes[t.dtype], "shape": list(t.shape), "data_offsets": [0, 0]}
                         for k, t in shapes.items()}).encode()
    data = len(header).to_bytes(8, "little") + header
    (member / "model.safetensors").write_bytes(data)
    _edit_config(member, head_hidden=head_hidden, weights_sha256=hashlib.sha256(data).hexdigest())
    return member


def test_a_header_whose_shapes_its_file_does_not_hold_is_refused_before_building(tmp_path, monkeypatch):
    member = _header_bomb(tmp_path / "bomb", [8192] * 4)  # ~1 GB of head if built, from a ~12 KB file
    assert (member / "model.safetensors").stat().st_size < 20_000
    _forbid_allocation(monkeypatch)
    with pytest.raises(MemberError, match=r"damaged .*needs \d+ bytes, its offsets \[0, 0\] hold 0"):
        BoneClassifier.load(member)
    with pytest.raises(MemberError, match="damaged"):
        load_model(member)


def test_the_reviewers_header_bomb_is_refused_with_a_small_peak(tmp_path):
    """The reported case (head_hidden [16384] x 8: 7.6 GB before) and one within the width bounds (~1 GB before), each
    loaded in a fresh process: refused with a message, peak RSS that of loading an intact tiny member."""
    import subprocess
    import sys

    code = ("import resource, sys\nfrom zoo.loader import load_model\nfrom zoo.members import MemberError\n"
            "try:\n    load_model(sys.argv[1]); print('LOADED')\n"
            "except MemberError as exc:\n    print('REFUSED', exc)\n"
            "print('RSS_MB', resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)\n")
    launch = "import subprocess, sys; sys.exit(subprocess.run([sys.executable, '-c', *sys.argv[1:]]).returncode)"
    def peak(member: Path) -> tuple[str, float]:
        out = subprocess.run([sys.executable, "-c", launch, code, str(member)], capture_output=True, text=True,
                             timeout=300, env={**os.environ, "PYTHONPATH": str(Path(zoo.model.__file__).parents[1])})
        assert "RSS_MB" in out.stdout, out.stdout + out.stderr
        return out.stdout, float(out.stdout.split("RSS_MB")[1])

    said, base = peak(_save(tmp_path / "intact"))  # importing torch and timm, building and loading a tiny member
    assert "LOADED" in said, said
    for name, hidden in (("reported", [16384] * 8), ("wide", [8192] * 4)):
        said, rss = peak(_header_bomb(tmp_path / name, hidden))
        assert "REFUSED" in said and "damaged" in said and "needs" in said, said
        assert rss < base + 100, f"{name}: peak RSS {rss:.0f} MB, an intact tiny member {base:.0f} MB"  # head: 1-7.6 GB


def test_a_torchvision_member_is_compared_with_its_weights_too(tmp_path):
    """torchvision's builders cannot run on the meta device; their members are still compared tensor by tensor with
    the header (then built for real, within the bounded sizes) and a mismatch is refused by name, never skipped."""
    from safetensors.torch import load_file, save_file

    member = BoneClassifier("regnet_x_800mf", img_size=32, head_hidden=[8]).save_member(tmp_path / "tv")
    state = load_file(member / "model.safetensors")
    name = next(k for k in state if k.startswith("backbone.") and state[k].dim() == 4)
    state[name] = state[name].reshape(state[name].shape[0], -1, 1, 1).contiguous()  # same bytes, another shape
    save_file(state, member / "model.safetensors")
    _edit_config(member, weights_sha256=hashlib.sha256((member / "model.safetensors").read_bytes()).hexdigest())
    with pytest.raises(ShapeMismatch, match=rf"{name}: the config builds"):
        BoneClassifier.load(member)


@pytest.mark.parametrize("flags, says", [(["--img-size", "2048"], "--img-size 2048"),
                                         (["--head-hidden", "9000"], "--head-hidden 9000"),
                                         (["--head-hidden", "8", "8", "8", "8", "8"], "at most 4 widths")])
def test_training_refuses_sizes_its_members_could_never_load(flags, says, tmp_path, capsys):
    from zoo.cli.train import get_args_parser, main

    args = get_args_parser().parse_args(["--out", str(tmp_path / "w"), *flags])
    assert main(args) == 2
    assert says in capsys.readouterr().err
    assert not (tmp_path / "w").exists()  # refused before anything is written


def test_the_constructor_takes_the_config_objects_fields(tmp_path):
    """``BoneClassifier(backbone, **options)``: the options are ClassifierConfig's fields (an unknown one is a
    TypeError naming it), get_config() is that config, and config.json round trips through from_pretrained."""
    from dataclasses import fields

    from zoo.model import ClassifierConfig

    model = BoneClassifier("resnet10t", img_size=48, head_hidden=[8], threshold=0.3, metrics={"val_auc": 0.8})
    assert list(model.get_config()) == [f.name for f in fields(ClassifierConfig)]
    assert ClassifierConfig.from_dict({**model.get_config(), "weights_sha256": "ab"}) == ClassifierConfig(
        **model.get_config())
    with pytest.raises(TypeError, match="img_sise"):
        BoneClassifier("resnet10t", img_sise=48)
    back = BoneClassifier.from_pretrained(str(model.save_member(tmp_path / "m")))
    assert back.get_config() == model.get_config() and back.threshold == 0.3
