"""Members and checkpoint epochs are fsync'ed before their renames (issue 19, second round): after a power loss
LATEST never names an epoch folder of zero-length files, nor config.json a weights file that is empty."""

from __future__ import annotations

import os

import torch

from zoo.checkpoint import Checkpoint
from zoo.members import MEMBER_FILES
from zoo.model import BoneClassifier


def _record(monkeypatch) -> list[tuple[str, str]]:
    events: list[tuple[str, str]] = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd):
        events.append(("fsync", os.readlink(f"/proc/self/fd/{fd}")))
        return real_fsync(fd)

    def replace(a, b):
        events.append(("replace", os.path.realpath(a)))
        return real_replace(a, b)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "replace", replace)
    return events


def test_checkpoint_epoch_files_are_fsynced_before_the_folder_is_renamed(tmp_path, monkeypatch):
    model = torch.nn.Linear(3, 1)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    sched = torch.optim.lr_scheduler.StepLR(opt, 1)
    events = _record(monkeypatch)
    final = Checkpoint(tmp_path / "ckpt").save({"epoch": 1}, model, opt, sched)
    tmp = str((tmp_path / "ckpt" / ".epoch-0001.tmp").resolve())
    rename = events.index(("replace", tmp))
    synced = {p for kind, p in events[:rename] if kind == "fsync"}
    files = sorted(f.name for f in final.iterdir())
    assert files and all(os.path.join(tmp, name) in synced for name in files), (files, synced)
    assert tmp in synced  # the folder's entries too
    assert ("fsync", str((tmp_path / "ckpt").resolve())) in events[rename:]  # and the rename itself


def test_save_member_fsyncs_each_file_before_its_rename(tmp_path, monkeypatch):
    model = BoneClassifier("resnet10t", img_size=64, head_hidden=[8])
    events = _record(monkeypatch)
    model.save_member(tmp_path / "m")
    for name in MEMBER_FILES:
        rename = next(i for i, (kind, p) in enumerate(events) if kind == "replace" and p.endswith("/" + name))
        assert ("fsync", events[rename][1]) in events[:rename], name
        assert ("fsync", str((tmp_path / "m").resolve())) in events[rename:], name
