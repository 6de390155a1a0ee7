"""A Hugging Face Space that serves the demo with chosen members: ``bone-zoo space ORG/NAME --models hf://ORG/RUN``.

Writes ``app.py`` (the Gradio demo over those members; Spaces set GRADIO_SERVER_NAME/PORT, which the app honours),
``requirements.txt`` and ``README.md`` with the Space metadata (``huggingface_hub.SpaceCard``); with ``push`` it creates
the Space (sdk gradio) and uploads the folder in one commit.
"""

from __future__ import annotations

from pathlib import Path

from huggingface_hub import HfApi, SpaceCard, SpaceCardData

from zoo.atomic import write_text

SPACE_FILES = ("app.py", "requirements.txt", "README.md")
DEFAULT_REQUIREMENT = "bone-zoo @ git+https://github.com/bone-zoo/bone-zoo"

APP = '''"""Hugging Face Space: the bone-zoo demo (Gradio, Grad-CAM) over the members in MODELS."""

from demo.app import MAX_FILE_MB, MemberPool, build_demo

MODELS = {models}
demo = build_demo(MemberPool.from_specs(MODELS), examples=False)

if __name__ == "__main__":  # address and port from GRADIO_SERVER_NAME / GRADIO_SERVER_PORT (set by Spaces)
    demo.launch(max_file_size=f"{{MAX_FILE_MB}}mb")
'''


def app_source(models: list[str]) -> str:
    """The Space's app.py over ``models``: the member specs are one Python literal (``repr`` of each), never text in
    a docstring or code, so a spec holding quotes, newlines or triple quotes stays data."""
    literal = "[\n" + "".join(f"    {str(m)!r},\n" for m in models) + "]" if models else "[]"
    return APP.format(models=literal)


def write_space(folder: str | Path, repo_id: str, models: list[str], requirement: str = DEFAULT_REQUIREMENT) -> Path:
    """Write the Space's three files into ``folder``; returns it."""
    import gradio

    folder = Path(folder)
    hub_models = sorted({m[len("hf://"):].split("/", 2)[0] + "/" + m[len("hf://"):].split("/", 2)[1]
                         for m in models if m.startswith("hf://") and m.count("/") >= 3})
    write_text(folder / "app.py", app_source(models))
    write_text(folder / "requirements.txt", f"{requirement}\n")
    data = SpaceCardData(title=repo_id.split("/")[-1], sdk="gradio", sdk_version=gradio.__version__,
                         app_file="app.py", license="apache-2.0", models=hub_models or None,
                         tags=["bone-zoo", "radiology", "x-ray", "grad-cam"], emoji="🦴", colorFrom="gray",
                         colorTo="blue", pinned=False)
    body = (f"# {repo_id.split('/')[-1]}\n\nThe [bone-zoo](https://github.com/bone-zoo/bone-zoo) demo: upload the "
            f"X-rays of one study, pick ensemble members and a CAM method, see each member's probability, the "
            f"ensemble's verdict and Grad-CAM heatmaps.\n\nMembers: {', '.join(f'`{m}`' for m in models)}.\n\n"
            "**A research tool, not a medical device.**\n")
    card = SpaceCard(f"---\n{data.to_yaml()}\n---\n\n{body}")
    write_text(folder / "README.md", str(card))
    return folder


def push_space(folder: str | Path, repo_id: str, *, private: bool = True, token: str | None = None,
               api: HfApi | None = None) -> str:
    """Create the Space (gradio sdk; private unless ``private=False``) if needed and upload ``folder``'s Space files
    in one commit; the commit URL. An existing public Space is refused (:class:`zoo.hub.PushError`) unless
    ``private=False``, as :func:`zoo.hub.push_run` refuses a public model repo.
    A file that is a symlink out of ``folder`` is refused, never followed."""
    folder = Path(folder)
    root = folder.resolve()
    for name in SPACE_FILES:
        f = folder / name
        if f.is_symlink() and not f.resolve().is_relative_to(root):
            raise ValueError(f"{f}: a symlink out of the Space folder (to {f.resolve()}); write the Space again with "
                             "`bone-zoo space` instead of linking files into it")
    api = api or HfApi(token=token)
    api.create_repo(repo_id, repo_type="space", space_sdk="gradio", private=private, exist_ok=True)
    if private and getattr(api.repo_info(repo_id, repo_type="space"), "private", None) is False:
        from zoo.hub import PushError

        raise PushError(f"{repo_id} already exists and is a PUBLIC Space: nothing pushed. Make it private on the Hub, "
                        "push to another Space, or give --public to publish the demo")
    info = api.upload_folder(repo_id=repo_id, folder_path=str(folder), repo_type="space",
                             commit_message="bone-zoo demo Space", allow_patterns=list(SPACE_FILES),
                             ignore_patterns=[".*"])
    return str(getattr(info, "commit_url", info))
