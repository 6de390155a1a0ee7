"""`bone-zoo space --push` is private by default like `bone-zoo push` (issue 19 review): an existing public Space is
refused unless --public, and --private/--public cannot both be given. The Hub test double; no network."""

from __future__ import annotations

import pytest
from test_hub import RecordingHfApi

from zoo.hub import PushError
from zoo.space import SPACE_FILES, push_space


@pytest.fixture
def space(tmp_path):
    for name in SPACE_FILES:
        (tmp_path / name).write_text(f"{name}\n")
    return tmp_path


def test_an_existing_public_space_is_refused_unless_public(space):
    api = RecordingHfApi(public=("org/demo",))
    with pytest.raises(PushError, match="already exists and is a PUBLIC Space: nothing pushed"):
        push_space(space, "org/demo", api=api)
    assert "upload_folder" not in [c[0] for c in api.calls]
    push_space(space, "org/demo", private=False, api=api)  # asked for: published
    assert [c[0] for c in api.calls][-1] == "upload_folder"


def test_a_new_space_is_private_by_default(space):
    api = RecordingHfApi()
    push_space(space, "org/new", api=api)
    assert api.calls[0][2]["private"] is True and [c[0] for c in api.calls] == ["create_repo", "upload_folder"]


@pytest.mark.parametrize("prog", ["space", "push"])
def test_private_and_public_are_mutually_exclusive(prog, capsys):
    from zoo.cli import push as push_cli
    from zoo.cli import space as space_cli

    parser = {"space": space_cli, "push": push_cli}[prog].get_args_parser()
    args = ["org/demo", "--models", "x"] if prog == "space" else ["run", "org/demo"]
    with pytest.raises(SystemExit):
        parser.parse_args([*args, "--private", "--public"])
    assert "not allowed with argument" in capsys.readouterr().err
