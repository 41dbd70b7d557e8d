"""``python -m reco_lightning --help``: the usage and the config groups, read off the YAML
presets without composing the config (composing needs the schema, which imports Lightning,
8 s here; this takes well under 2 s). ``--hydra-help`` is still Hydra's own."""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

USAGE = """\
usage: python -m reco_lightning +method=NAME [+reco=on|off] [group=option ...] [key=value ...]

Self-supervised training with ReCo's relation terms (a Hydra application).

  python -m reco_lightning +method=moco +reco=on               # MoCo v2 + ReCo on the digits
  python -m reco_lightning +method=simclr +reco=on dataset=imagefolder dataset.root=DIR
  python -m reco_lightning -m +method=moco,simclr +reco=on,off   # a multirun sweep
  python -m reco_lightning +method=moco --cfg job                # every key and its value
"""

#: the groups a user chooses from, in the order shown, and how each is chosen
GROUPS = {
    "method": "+method=",
    "reco": "+reco=",
    "dataset": "dataset=",
    "strategy": "strategy=",
    "logger": "logger=",
    "hydra/launcher": "hydra/launcher=",
    "hydra/sweeper": "hydra/sweeper=",
}


def conf_dir() -> Path:
    """The shipped ``conf/`` folder, found without importing it (its ``__init__`` registers
    the schema)."""
    spec = importlib.util.find_spec("reco_lightning.conf")
    assert spec is not None and spec.submodule_search_locations
    return Path(next(iter(spec.submodule_search_locations)))


def summary(preset: Path, width: int = 88) -> str:
    """The first sentence of a preset's opening comment (its description), at most ``width``
    characters, or nothing."""
    words = []
    for line in preset.read_text().splitlines():
        if not line.startswith("#"):
            break
        if not line.startswith("# @package"):
            words.append(line.lstrip("#").strip())
    sentence = re.split(r"(?<=[.;])\s", " ".join(words))[0].rstrip(".;")
    return sentence if len(sentence) <= width else sentence[: width - 3].rsplit(" ", 1)[0] + " ..."


def help_text() -> str:
    root = conf_dir()
    lines = [
        USAGE,
        "Config groups (choose one option of each; the presets are in reco_lightning/conf):",
    ]
    for group, flag in GROUPS.items():
        presets = sorted(p for p in (root / group).glob("*.yaml") if p.stem != "base")
        if not presets:
            continue
        lines.append(f"\n  {flag}")
        width = max(len(p.stem) for p in presets)
        lines += [f"    {p.stem:<{width}}  {summary(p)}".rstrip() for p in presets]
    lines += [
        "",
        "Settings: seed, resume, pictures, backbone.*, optimizer.*, knn.*, diagnostics.*, "
        "trainer.*,",
        "dataset.*, method.*, reco.*; `--cfg job` prints them with their values, README.md "
        "explains them.",
        "Hydra's own options: --hydra-help.",
    ]
    return "\n".join(lines)


def print_help() -> None:
    print(help_text())


def wants_help(arguments: list[str]) -> bool:
    """Whether the command line asks for this help (``--help`` or ``-h``; ``--hydra-help``
    is Hydra's)."""
    return any(argument in ("--help", "-h") for argument in arguments)
