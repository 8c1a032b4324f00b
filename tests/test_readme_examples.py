"""The Python examples in README.md run as written (in a temporary working directory)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[1] / "README.md"
BLOCKS = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)


def test_readme_has_examples():
    assert len(BLOCKS) >= 2


@pytest.mark.parametrize("index", range(len(BLOCKS)))
def test_readme_example_runs(index, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    exec(compile(BLOCKS[index], f"README.md example {index}", "exec"), namespace)
    outputs = sorted(p.name for p in tmp_path.iterdir())
    assert outputs, "each README example saves an adapter"
    for directory in tmp_path.iterdir():
        assert (directory / "adapter_config.json").is_file() and (directory / "adapter_model.safetensors").is_file()
