"""The README's Python snippets run as written (each in a fresh namespace, in a temporary
working directory)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch
import torchvision

README = Path(__file__).resolve().parents[1] / "README.md"
BLOCKS = re.findall(r"^```python\n(.*?)^```", README.read_text(), flags=re.S | re.M)


def test_the_readme_has_python_snippets():
    assert len(BLOCKS) >= 2


@pytest.mark.parametrize(
    "index",
    [
        pytest.param(i, marks=pytest.mark.slow) if ".fit(" in block else i
        for i, block in enumerate(BLOCKS)
    ],
)
def test_readme_snippet_runs(index, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    source = BLOCKS[index]
    if "backbone.pth" in source:  # the export section's loader: give it what the export writes
        network = torchvision.models.resnet18()
        network.fc = torch.nn.Identity()
        torch.save(network.state_dict(), "backbone.pth")
    namespace: dict = {"__name__": "readme_snippet"}
    exec(compile(source, f"README.md python block {index + 1}", "exec"), namespace)  # noqa: S102
    if "model" in namespace and hasattr(namespace["model"], "reco"):
        reco = namespace["model"].reco
        assert int(reco.bank.num_enqueued) > 0  # ReCo ran inside the snippet's training
