"""The README's `kernels` snippet runs as written (on CPU, the torch backend) and does what its
comments say."""

from __future__ import annotations

import re
from pathlib import Path

README = Path(__file__).resolve().parents[2] / "README.md"


def readme_kernels_snippet() -> str:
    """The first ``python`` block of the README's "`kernels` on its own" section."""
    text = README.read_text()
    section = text[text.index("## `kernels` on its own") :]
    match = re.search(r"```python\n(.*?)```", section, re.DOTALL)
    assert match, "no python block in the kernels section"
    return match.group(1)


def test_the_readme_kernels_snippet_runs_as_written():
    namespace: dict = {}
    exec(compile(readme_kernels_snippet(), str(README), "exec"), namespace)
    B, T = namespace["B"], namespace["T"]
    assert namespace["logp"].shape == (B, T) and namespace["ent"].shape == (B, T)
    assert namespace["loss"].dim() == 0 and namespace["lm_head"].weight.grad is not None
    assert namespace["adv"].shape == namespace["ret"].shape == (B, T)
    assert "import lightning" not in readme_kernels_snippet()
