"""What ships in hub/: fp16 safetensors of at most 15 MiB a file, each package with a model card."""

import json
import struct
from pathlib import Path

import pytest
from helpers import REPO

HUB = REPO / "hub"
PACKAGES = sorted(p for p in HUB.iterdir() if p.is_dir())


def _safetensors_dtypes(path: Path) -> set:
    with path.open("rb") as f:
        (length,) = struct.unpack("<Q", f.read(8))
        header = json.loads(f.read(length))
    return {entry["dtype"] for name, entry in header.items() if name != "__metadata__"}


@pytest.mark.parametrize("package", PACKAGES, ids=[p.name for p in PACKAGES])
def test_shipped_package(package):
    weights = list(package.rglob("*.safetensors"))
    assert weights, f"{package.name} ships no safetensors"
    assert not list(package.rglob("*.bin")) and not list(package.rglob("*.pt")), "pickled weights are never shipped"
    for path in weights:
        assert path.stat().st_size <= 15 * 2**20, f"{path} is over 15 MiB"
        floats = {d for d in _safetensors_dtypes(path) if d.startswith(("F", "BF"))}
        assert floats == {"F16"}, f"{path} stores {floats}, not fp16"  # integer buffers (BN counters) may stay
    card = (package / "README.md").read_text()
    assert card.startswith("---\n") and "license:" in card.split("---")[1], f"{package.name}/README.md lacks a card header"


PIPELINES = [p for p in PACKAGES if (p / "model_index.json").is_file() and '"DD3GPipeline"' in (p / "model_index.json").read_text()]


@pytest.mark.parametrize("package", PIPELINES, ids=[p.name for p in PIPELINES])
def test_shipped_pipeline_is_within_the_config_bounds(package):
    # The bounds that guard against hostile configs must never refuse what ships.
    from dd3g.checkpoint_config import check_checkpoint_configs

    check_checkpoint_configs(package)
