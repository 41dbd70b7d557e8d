"""A warning for bf16 autocast on a CPU that has no BF16 instructions.

On x86 CPUs with ``avx512_bf16`` or ``amx_bf16``, ``trainer.precision=bf16-mixed`` is
the fast choice (1.4x over float32 at the quality protocol's settings). Without them,
PyTorch emulates bf16 and the same step can be 20x slower than ``32-true`` (measured:
14.1 s against 0.65 s for a MoCo step on an AVX2 AMD EPYC; docs/benchmarks.md). The run
still trains correctly, so this is a warning, not an error, and it names the fix.

>>> bf16_cpu_warning("bf16-mixed", on_cpu=True, flags={"avx2"}) is not None
True
>>> bf16_cpu_warning("32-true", on_cpu=True, flags={"avx2"}) is None
True
"""

from __future__ import annotations

import platform
from pathlib import Path

#: CPU flags (``/proc/cpuinfo``) under which bf16 runs in hardware
BF16_FLAGS = frozenset({"avx512_bf16", "amx_bf16"})


def cpu_flags(cpuinfo: Path = Path("/proc/cpuinfo")) -> set[str] | None:
    """The CPU's feature flags, or ``None`` where they cannot be read (not Linux/x86)."""
    if platform.system() != "Linux" or not cpuinfo.is_file():
        return None
    for line in cpuinfo.read_text().splitlines():
        if line.startswith("flags"):
            return set(line.split(":", 1)[1].split())
    return None


def bf16_cpu_warning(precision: str, on_cpu: bool, flags: set[str] | None) -> str | None:
    """The warning for ``precision`` on this machine, or ``None`` when there is nothing to say
    (not bf16, not on the CPU, or flags unknown or with BF16 instructions)."""
    if not (on_cpu and str(precision).startswith("bf16")) or flags is None:
        return None
    if flags & BF16_FLAGS:
        return None
    return (
        f"trainer.precision={precision} on a CPU without BF16 instructions (no "
        f"{' or '.join(sorted(BF16_FLAGS))}): bf16 is emulated and can be 20x slower than "
        "float32; use trainer.precision=32-true on this machine"
    )
