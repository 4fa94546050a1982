"""The README's "Adding an architecture" example must keep working: it is run here."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch

import architectures

README = Path(__file__).resolve().parents[1] / "README.md"
START, END = "<!-- adding-an-architecture:start -->", "<!-- adding-an-architecture:end -->"


# The example's plugin is forgotten after the test (a fresh registry per test).
pytestmark = pytest.mark.usefixtures("fresh_registry")


def _readme_example() -> str:
    text = README.read_text(encoding="utf-8")
    section = text[text.index(START) + len(START) : text.index(END)]
    match = re.search(r"^```python\n(.*?)^```", section, flags=re.S | re.M)
    assert match, "no ```python block between the adding-an-architecture markers"
    return match.group(1)


def test_readme_example_registers_a_working_architecture(tmp_path: Path) -> None:
    path = tmp_path / "readme_example.py"
    path.write_text(_readme_example(), encoding="utf-8")
    (name,) = architectures.load_plugin_file(path)  # also checks the output shape
    assert architectures.get_spec(name).source == "plugin:readme_example.py"
    model = architectures.build(name, width=0.5)
    logits = model(torch.rand(2, 3, 104, 112))
    assert logits.shape == (2, 3, 104, 112)
