"""The README's library snippet runs as written (on this machine's device: the CPU here, a GPU where present)."""

from __future__ import annotations

import re
from helpers import REPO

ROOT = REPO


def readme_block(section: str, language: str) -> str:
    text = (ROOT / "README.md").read_text()
    body = text.split(f"\n## {section}\n", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(rf"```{language}\n(.*?)```", body, flags=re.S)
    assert len(blocks) == 1, f"expected one {language} block in README section {section!r}"
    return blocks[0]


def test_library_snippet_runs_as_written(tmp_path, monkeypatch):
    (tmp_path / "examples").symlink_to(ROOT / "examples")
    monkeypatch.chdir(tmp_path)  # the snippet writes object.ply where it runs
    namespace = {}
    exec(compile(readme_block("Use it", "python"), "README.md (Use it)", "exec"), namespace)
    assert (tmp_path / "object.ply").stat().st_size > 0
    assert tuple(namespace["gaussians"].batch_shape) == (3,) and len(namespace["files"]) == 1
    assert namespace["views"].rgb.shape[-2:] == (256, 256)
