"""``benchmarks/step_cost.py`` measures the model it says: ReCo settings given with ``--reco``
reach the ReCo it times."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import step_cost  # noqa: E402


def test_reco_settings_reach_the_timed_model(monkeypatch, capsys):
    built = []
    real_build = step_cost.build
    monkeypatch.setattr(step_cost, "build", lambda *a: built.append(real_build(*a)) or built[-1])
    arguments = "--methods simclr --width 4 --image-size 8 --batch-size 8 --rounds 1 --steps 1"
    monkeypatch.setattr(
        sys,
        "argv",
        ["step_cost.py", *arguments.split(), "--reco", "negatives=batch", "w_local=0.5"],
    )
    step_cost.main()
    off, on = built
    assert off.reco is None and on.reco.negatives_kind == "batch" and on.reco.w_local == 0.5
    printed = capsys.readouterr().out
    assert "ReCo {'negatives': 'batch', 'w_local': 0.5}" in printed and "| simclr |" in printed


def test_a_reco_setting_without_a_value_is_refused():
    with pytest.raises(SystemExit, match="write KEY=VALUE"):
        step_cost.reco_setting("negatives")


def test_a_reco_setting_reads_numbers_and_null_as_the_cli_does():
    # plain YAML 1.1 reads 1e-3 as the string "1e-3", which the model would refuse or misuse
    assert step_cost.reco_setting("temperature=1e-3") == ("temperature", 0.001)
    assert step_cost.reco_setting("w_local=null") == ("w_local", None)
    assert step_cost.reco_setting("negatives=batch") == ("negatives", "batch")
