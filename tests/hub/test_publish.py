"""hub/publish.py --dry-run: what would be uploaded, checked offline (no network call is possible here)."""

from __future__ import annotations

import importlib.util
import json
import sys

import pytest
import torch
import yaml
from huggingface_hub import ModelCard

from dd3g.pipeline import DD3GPipeline
from helpers import REPO, rgba_image, toy_pipeline

ROOT = REPO
TOKEN = "hf_sentinelTOKENthatmustneverbeprinted"


def load_publish():
    # Loaded from its path (hub/ is a folder of model packages, not a Python package); no __pycache__
    # in hub/, where test_hub.py would take it for a package.
    spec = importlib.util.spec_from_file_location("dd3g_publish", ROOT / "hub" / "publish.py")
    module = importlib.util.module_from_spec(spec)
    dont_write = sys.dont_write_bytecode
    sys.dont_write_bytecode = True
    try:
        spec.loader.exec_module(module)
    finally:
        sys.dont_write_bytecode = dont_write
    return module


@pytest.fixture(scope="module")
def publish():
    return load_publish()


@pytest.fixture
def no_network(monkeypatch):
    """A token in the environment (to prove it is never printed) and every Hub call made to fail."""
    import huggingface_hub

    monkeypatch.setenv("HF_TOKEN", TOKEN)
    calls = []

    def refuse(name):
        def call(*args, **kwargs):
            calls.append(name)
            raise AssertionError(f"HfApi.{name} called")
        return call

    for name in ("create_repo", "upload_folder", "add_space_variable"):
        monkeypatch.setattr(huggingface_hub.HfApi, name, refuse(name))
    return calls


@pytest.fixture(scope="module")
def model_folder(tmp_path_factory):
    folder = tmp_path_factory.mktemp("dd3g-model")
    toy_pipeline().save_pretrained(folder)
    (folder / "README.md").write_text(
        "---\nlicense: apache-2.0\ntags:\n  - toy\n---\n\n# dd3g-toy\n\n## Training\n\nDistilled for 123 steps "
        "(sentinel-training-detail).\n"
    )
    return folder


def test_dry_run_writes_exactly_the_repos_and_nothing_goes_out(publish, model_folder, tmp_path, no_network, capsys):
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    (corpus / "shard-00000.parquet").write_bytes(b"PAR1 not really")
    out = tmp_path / "staged"
    code = publish.main(["--namespace", "tester", "--model", str(model_folder), "--dataset", str(corpus),
                         "--dry-run", str(out)])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert no_network == []
    assert sorted(p.name for p in out.iterdir()) == ["dataset", "model", "plan.json", "space"]
    plan = json.loads((out / "plan.json").read_text())
    assert [(r["repo_id"], r["repo_type"]) for r in plan["repos"]] == [
        ("tester/dd3g-tiny", "model"), ("tester/dd3g-corpus", "dataset"), ("tester/dd3g", "space")]
    assert plan["space_variables"] == {"DD3G_CHECKPOINT": "tester/dd3g-tiny"}
    # The token is never printed nor written.
    assert TOKEN not in captured.out + captured.err
    assert not any(TOKEN.encode() in p.read_bytes() for p in out.rglob("*") if p.is_file())

    # The model repo loads as a pipeline and makes the same object as its source.
    staged = DD3GPipeline.from_pretrained(out / "model")
    source = DD3GPipeline.from_pretrained(model_folder)
    image = rgba_image(64)
    torch.testing.assert_close(staged(image, seeds=[4]).gaussians.means, source(image, seeds=[4]).gaussians.means)
    card = ModelCard.load(out / "model" / "README.md")
    assert card.data.pipeline_tag == "image-to-3d" and card.data.library_name == "dd3g"
    assert card.data.license == "apache-2.0" and {"toy", "dd3g", "gaussian-splatting"} <= set(card.data.tags)
    assert card.data.datasets == ["tester/dd3g-corpus"]
    assert 'DD3GPipeline.from_pretrained("tester/dd3g-tiny")' in card.text
    assert "sentinel-training-detail" in card.text  # the source card's training details are kept

    # The dataset repo: the corpus files and a card.
    assert (out / "dataset" / "shard-00000.parquet").read_bytes() == b"PAR1 not really"
    assert "image-to-3d" in (out / "dataset" / "README.md").read_text()

    # The Space: runnable code, and a README front matter that is spaces.yaml key for key.
    space = out / "space"
    for needed in ("app.py", "requirements.txt", "dd3g/__init__.py", "dd3g/pipeline.py", "dd3g/models/pepd.py",
                   "scripts/fetch_u2netp.py", "examples/test-0.png"):
        assert (space / needed).is_file(), needed
    assert not list(space.rglob("__pycache__")) and not list(space.rglob("*.pyc"))
    text = (space / "README.md").read_text()
    assert text.startswith("---\n")
    front = yaml.safe_load(text.split("---\n")[1])
    assert front == yaml.safe_load((ROOT / "spaces.yaml").read_text())


def test_refuses_a_broken_model_and_a_missing_token(publish, model_folder, tmp_path, monkeypatch, no_network, capsys):
    missing = tmp_path / "nothing-here"
    assert publish.main(["--namespace", "tester", "--model", str(missing), "--dry-run", str(tmp_path / "a")]) == 2
    assert f"model folder {missing} does not exist" in capsys.readouterr().err

    pickled = tmp_path / "pickled"
    toy_pipeline().save_pretrained(pickled)
    (pickled / "student" / "extra.bin").write_bytes(b"\x80\x04pickle")
    assert publish.main(["--namespace", "tester", "--model", str(pickled), "--dry-run", str(tmp_path / "b")]) == 2
    assert "pickled files" in capsys.readouterr().err

    # A real publish without any token stops before any Hub call, with a hint.
    monkeypatch.delenv("HF_TOKEN")
    monkeypatch.setattr("huggingface_hub.get_token", lambda: None)
    assert publish.main(["--namespace", "tester", "--model", str(model_folder)]) == 2
    assert "no Hugging Face token" in capsys.readouterr().err
    assert no_network == []
