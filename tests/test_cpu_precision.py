"""bf16 autocast on a CPU without BF16 instructions is emulated and slow: warn, name the fix."""

from __future__ import annotations

import warnings

import pytest

from reco_lightning.run import train as train_module
from reco_lightning.run.cpu_precision import bf16_cpu_warning, cpu_flags
from reco_lightning.run.train import train


def test_the_flags_are_read_from_cpuinfo(tmp_path):
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text("processor\t: 0\nflags\t\t: fpu sse2 avx2 avx512_bf16\n\nprocessor\t: 1\n")
    assert cpu_flags(cpuinfo) == {"fpu", "sse2", "avx2", "avx512_bf16"}
    assert cpu_flags(tmp_path / "absent") is None


@pytest.mark.parametrize(
    ("precision", "on_cpu", "flags", "warns"),
    [
        ("bf16-mixed", True, {"avx2", "fma"}, True),
        ("bf16-true", True, {"avx2"}, True),
        ("bf16-mixed", True, {"avx2", "avx512_bf16"}, False),
        ("bf16-mixed", True, {"amx_bf16"}, False),
        ("bf16-mixed", False, {"avx2"}, False),  # on a GPU
        ("32-true", True, {"avx2"}, False),
        ("bf16-mixed", True, None, False),  # flags unknown: say nothing rather than guess
    ],
)
def test_the_warning_only_where_bf16_is_emulated(precision, on_cpu, flags, warns):
    message = bf16_cpu_warning(precision, on_cpu, flags)
    assert (message is not None) == warns
    if warns:
        assert f"trainer.precision={precision}" in message and "32-true" in message


def test_a_bf16_run_on_such_a_cpu_warns_once_and_still_trains(
    compose_config, tiny, tmp_path, monkeypatch
):
    monkeypatch.setattr(train_module, "cpu_flags", lambda: {"avx2", "fma"})
    cfg = compose_config("+method=moco", "+reco=on", *tiny, "trainer.precision=bf16-mixed")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        summary = train(cfg, tmp_path)
    ours = [w for w in caught if "without BF16 instructions" in str(w.message)]
    assert len(ours) == 1
    assert summary["steps"] == 3
