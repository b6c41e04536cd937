#!/usr/bin/env python
"""Publish DD3G to the Hugging Face Hub: the model repo, optionally the dataset repo, and the Space.

    python hub/publish.py --namespace NAME [--model hub/dd3g-tiny] [--dataset data/corpus] [--private]
    python hub/publish.py --namespace NAME --dry-run out/      # writes what would be uploaded; no network

Every repo is first staged in a local folder (under --dry-run DIR: model/, dataset/, space/, plus plan.json
describing the calls), and exactly that folder is uploaded with HfApi.create_repo + upload_folder:

- model:   the pipeline folder (checked with DD3GPipeline.from_pretrained, safetensors only) and a model card
           (huggingface_hub.ModelCard: pipeline_tag image-to-3d, library_name dd3g, tags, license, our usage
           snippet; the source folder's README body, which holds the training details, is kept).
- dataset: a built corpus folder, with a dataset card unless the folder brings its own README.md.
- space:   app.py, the dd3g package, the example images, requirements.txt, the u2netp fetch script, and a
           README whose YAML front matter is spaces.yaml verbatim. The Space loads the model through its
           DD3G_CHECKPOINT variable, set to the model repo id.

The token comes only from the environment (HF_TOKEN) or the login cache (`hf auth login`); it is never
printed or written.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Optional, Sequence

import yaml

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_MODEL = ROOT / "hub" / "dd3g-tiny"
SPACE_METADATA = ROOT / "spaces.yaml"
PICKLE_SUFFIXES = {".bin", ".pt", ".pth", ".ckpt", ".pkl", ".pickle"}  # never published: loading them runs code
MODEL_TAGS = ["dd3g", "gaussian-splatting", "image-to-3d", "distillation", "3d"]
# What the Space needs to run app.py: code, examples, pinned requirements, the rembg model fetcher.
SPACE_FILES = ["app.py", "requirements.txt", "scripts/fetch_u2netp.py"]
SPACE_GLOBS = ["dd3g/**/*.py", "examples/*.png"]


class PublishError(Exception):
    """Something to fix before publishing; the message says what."""


def read_front_matter(path: Path) -> tuple[dict, str]:
    """(YAML front matter, body) of a Markdown file; ({}, text) without front matter."""
    text = path.read_text(encoding="utf-8")
    if text.startswith("---\n"):
        end = text.find("\n---", 4)
        if end != -1:
            return yaml.safe_load(text[4:end]) or {}, text[end + 4:].lstrip("\n")
    return {}, text


def usage_snippet(model_repo: str, space_repo: str) -> str:
    return f"""```python
# The dd3g package ships with the Space's code: git clone https://huggingface.co/spaces/{space_repo}
# and `pip install -r requirements.txt` there.
from dd3g import DD3GPipeline

pipe = DD3GPipeline.from_pretrained("{model_repo}")   # safetensors only, no remote code
pipe.to("cuda")                                        # or stay on the CPU
out = pipe("photo.png", seeds=[0, 1], num_samples=2)   # RGBA kept as is; opaque photos get rembg
out.gaussians[0].save_ply("object.ply")                # standard 3DGS PLY, +Y up
```

Command line: `python -m dd3g photo.png --out results/ --checkpoint {model_repo} --format ply,splat,glb,mp4`."""


def stage_model(source: Path, target: Path, model_repo: str, dataset_repo: Optional[str], space_repo: str) -> None:
    """Copy the pipeline folder and write its model card."""
    from huggingface_hub import ModelCard, ModelCardData

    from dd3g.pipeline import CheckpointError, DD3GPipeline

    pickles = sorted(str(p.relative_to(source)) for p in source.rglob("*") if p.suffix in PICKLE_SUFFIXES)
    if pickles:
        raise PublishError(f"{source} holds pickled files, which are never published: {', '.join(pickles)}")
    try:
        DD3GPipeline.from_pretrained(source)  # refuses missing, incomplete or NaN checkpoints
    except CheckpointError as error:
        raise PublishError(f"the model folder is not a loadable DD3G pipeline: {error}") from None
    shutil.copytree(source, target, ignore=shutil.ignore_patterns("README.md", "__pycache__", ".*"))

    meta, body = read_front_matter(source / "README.md") if (source / "README.md").is_file() else ({}, "")
    tags = list(dict.fromkeys(list(meta.get("tags") or []) + MODEL_TAGS))
    data = ModelCardData(
        license=meta.get("license", "apache-2.0"), library_name="dd3g", pipeline_tag="image-to-3d", tags=tags,
        datasets=[dataset_repo] if dataset_repo else meta.get("datasets"),
    )
    name = model_repo.split("/")[-1]
    lines = [
        f"# {name}",
        "",
        "A DD3G generator: one RGBA image in, 3D Gaussians out, in one forward pass of a student distilled from a "
        "multi-view diffusion model (*Distilling Multi-view Diffusion Models into 3D Generators*, "
        "Qin et al., arXiv 2504.00457). The seed selects the noise the student starts from; the card below says "
        "how much the objects of different seeds differ for this checkpoint.",
        "",
        f"Try it in the Space: [{space_repo}](https://huggingface.co/spaces/{space_repo}).",
        "",
        "## Usage",
        "",
        usage_snippet(model_repo, space_repo),
    ]
    if body.strip():
        # The source card's body (training details, numbers) is kept under its own heading.
        lines += ["", "## Training details (from the source model card)", "", _demote_headings(body.strip())]
    content = f"---\n{data.to_yaml()}\n---\n\n" + "\n".join(lines) + "\n"
    ModelCard(content).save(target / "README.md")


def _demote_headings(markdown: str) -> str:
    """Nest the source card under our '##' heading: '# x' -> '### x', '## x' -> '#### x' (code blocks kept)."""
    out, in_code = [], False
    for line in markdown.splitlines():
        if line.lstrip().startswith("```"):
            in_code = not in_code
        out.append("##" + line if not in_code and line.startswith("#") else line)
    return "\n".join(out)


def stage_dataset(source: Path, target: Path, dataset_repo: str, model_repo: str) -> None:
    from huggingface_hub import DatasetCard, DatasetCardData

    if not source.is_dir() or not any(source.iterdir()):
        raise PublishError(f"--dataset {source} is not a folder with a built corpus in it")
    shutil.copytree(source, target, ignore=shutil.ignore_patterns("__pycache__", ".*"))
    if (target / "README.md").is_file():
        return  # the corpus builder's own card wins
    data = DatasetCardData(license="apache-2.0", task_categories=["image-to-3d"], tags=["dd3g", "rgba", "synthetic"],
                           pretty_name=dataset_repo.split("/")[-1])
    content = (
        f"---\n{data.to_yaml()}\n---\n\n# {dataset_repo.split('/')[-1]}\n\n"
        f"The RGBA image corpus the DD3G student [{model_repo}](https://huggingface.co/{model_repo}) was distilled "
        "on (built by `training/build_corpus.py`).\n"
    )
    DatasetCard(content).save(target / "README.md")


def stage_space(target: Path, model_repo: str) -> None:
    """The Space: code + README whose front matter is spaces.yaml, key for key."""
    metadata = yaml.safe_load(SPACE_METADATA.read_text(encoding="utf-8"))
    files = [ROOT / f for f in SPACE_FILES] + [p for pattern in SPACE_GLOBS for p in sorted(ROOT.glob(pattern))]
    for path in files:
        if not path.is_file():
            raise PublishError(f"the Space needs {path.relative_to(ROOT)}, which is missing")
        destination = target / path.relative_to(ROOT)
        destination.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(path, destination)
    front = yaml.safe_dump(metadata, sort_keys=False, allow_unicode=True)
    body = (
        f"# {metadata.get('title', 'DD3G')}\n\n{metadata.get('short_description', '')}\n\n"
        f"The app loads the model named by the `DD3G_CHECKPOINT` Space variable ([{model_repo}]"
        f"(https://huggingface.co/{model_repo})). Run it locally with `python app.py --checkpoint {model_repo}`.\n"
    )
    (target / "README.md").write_text(f"---\n{front}---\n\n{body}", encoding="utf-8")


def stage_all(args, out: Path) -> dict:
    """Stage every repo under `out` and return the plan (repo ids, types, folders, Space variables)."""
    namespace = args.namespace.strip("/")
    model_repo = f"{namespace}/{args.model_name}"
    space_repo = f"{namespace}/{args.space_name}"
    dataset_repo = f"{namespace}/{args.dataset_name}" if args.dataset else None
    model_dir = Path(args.model)
    if not model_dir.is_dir():
        hint = " (no trained dd3g-tiny ships yet: pass --model DIR)" if model_dir.resolve() == DEFAULT_MODEL else ""
        raise PublishError(f"model folder {model_dir} does not exist{hint}")
    out.mkdir(parents=True, exist_ok=True)
    for sub in ("model", "dataset", "space"):
        if (out / sub).exists():
            raise PublishError(f"{out / sub} already exists; give an empty --dry-run folder")
    plan = {"repos": [], "space_variables": {"DD3G_CHECKPOINT": model_repo}, "private": bool(args.private)}
    stage_model(model_dir, out / "model", model_repo, dataset_repo, space_repo)
    plan["repos"].append({"repo_id": model_repo, "repo_type": "model", "folder": "model"})
    if dataset_repo:
        stage_dataset(Path(args.dataset), out / "dataset", dataset_repo, model_repo)
        plan["repos"].append({"repo_id": dataset_repo, "repo_type": "dataset", "folder": "dataset"})
    stage_space(out / "space", model_repo)
    plan["repos"].append({"repo_id": space_repo, "repo_type": "space", "folder": "space", "space_sdk": "gradio"})
    listed = yaml.safe_load(SPACE_METADATA.read_text(encoding="utf-8")).get("models") or []
    if model_repo not in listed:  # the Hub links Space and model through this key
        print(f"note: spaces.yaml's `models:` does not list {model_repo}; add it so the Hub links the Space to the model",
              file=sys.stderr)
    return plan


def upload(plan: dict, staged: Path) -> None:
    from huggingface_hub import HfApi, get_token

    if not get_token():  # HF_TOKEN or the login cache; the value itself is never shown
        raise PublishError("no Hugging Face token: set HF_TOKEN or run `hf auth login` (or use --dry-run DIR)")
    api = HfApi()
    for repo in plan["repos"]:
        extra = {"space_sdk": repo["space_sdk"]} if repo["repo_type"] == "space" else {}
        url = api.create_repo(repo["repo_id"], repo_type=repo["repo_type"], private=plan["private"], exist_ok=True, **extra)
        api.upload_folder(repo_id=repo["repo_id"], repo_type=repo["repo_type"], folder_path=staged / repo["folder"],
                          commit_message="Publish with hub/publish.py")
        print(f"{repo['repo_type']}: {url}")
        if repo["repo_type"] == "space":
            for key, value in plan["space_variables"].items():
                api.add_space_variable(repo["repo_id"], key, value)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description="Publish the DD3G model, dataset and Space to the Hugging Face Hub.")
    parser.add_argument("--namespace", required=True, help="Hub user or organisation that owns the repos")
    parser.add_argument("--model", default=str(DEFAULT_MODEL), help="pipeline folder to publish (default: hub/dd3g-tiny)")
    parser.add_argument("--model-name", default="dd3g-tiny")
    parser.add_argument("--dataset", default=None, help="a built corpus folder to publish as a dataset repo (optional)")
    parser.add_argument("--dataset-name", default="dd3g-corpus")
    parser.add_argument("--space-name", default="dd3g")
    parser.add_argument("--private", action="store_true", help="create the repos private")
    parser.add_argument("--dry-run", metavar="DIR", default=None,
                        help="write what would be uploaded to DIR (model/, dataset/, space/, plan.json); no network")
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.dry_run:
            out = Path(args.dry_run)
            plan = stage_all(args, out)
            (out / "plan.json").write_text(json.dumps(plan, indent=2) + "\n")
            print(f"dry run: staged {', '.join(r['repo_id'] for r in plan['repos'])} in {out}")
            return 0
        with tempfile.TemporaryDirectory(prefix="dd3g-publish-") as tmp:
            plan = stage_all(args, Path(tmp))
            upload(plan, Path(tmp))
        return 0
    except PublishError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
