"""The package's layers: each part imports only parts below it, and nothing imports in a cycle.

From the bottom: shared pieces with no knowledge of training (errors, utils, the generic
config helpers, checkpoints files, models, pure losses, feature measures); then data and
ReCo; then the methods, which compose ReCo; then what drives a run (``run``: callbacks, logs,
run directories, the offline evaluation); and at the top the entry points. An import
of a higher layer, even one inside a function, fails this test, so the plug-in never
comes to depend on what it plugs into.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "reco_lightning"

#: the layer of each top-level part of the package (a module or a subpackage)
LAYERS: dict[str, int] = {
    "errors": 0,
    "utils": 0,
    "run.__init__": 0,
    "run.config_checks": 0,
    "run.checkpoints": 0,
    "run.cpu_precision": 0,
    "models": 0,
    "losses": 0,
    "metrics": 0,
    "eval": 0,
    "data": 1,
    "reco": 1,
    "methods": 2,
    "run.callbacks": 3,
    "run.metrics_log": 3,
    "run.trackers": 3,
    "run.run_dir": 3,
    "run.evaluate": 3,
    "run.report": 3,
    "run.sweep": 3,
    "run.launch": 4,
    "run.train": 4,
    "run.cli_checks": 4,
    "run.cli_help": 4,
    "run.schema": 4,
    "run.worker": 5,
    "__main__": 5,
    "__init__": 5,
    "export": 5,
}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports(path: Path, name: str | None = None) -> set[str]:
    """Every ``reco_lightning`` module that ``path`` (the module ``name``) imports, at the top
    or inside a function."""
    name = name or module_name(path)
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if target.startswith("reco_lightning"):
                found |= (
                    {target} if node.module else {f"{target}.{alias.name}" for alias in node.names}
                )
        elif isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names if alias.name.startswith("reco_lightning")}
    return found


#: command modules inside a lower part: entry points, at the top
ENTRY_POINTS = {"reco_lightning.eval.__main__": "eval.__main__"}
LAYERS["eval.__main__"] = 5


def part(module: str) -> str:
    """``reco_lightning.eval.linear`` -> ``eval``; ``reco_lightning.run.train`` -> ``run.train``
    (the modules of ``run`` have layers of their own); the package itself -> ``__init__``."""
    if module in ENTRY_POINTS:
        return ENTRY_POINTS[module]
    pieces = module.split(".")
    if len(pieces) > 1 and pieces[1] == "run":  # a grouping of parts, each with its own layer
        return f"run.{pieces[2]}" if len(pieces) > 2 else "run.__init__"
    return pieces[1] if len(pieces) > 1 else "__init__"


def test_every_part_has_a_layer():
    parts = {part(module_name(p)) for p in PACKAGE.rglob("*.py")} - {"conf"}
    assert parts <= set(LAYERS), (
        f"give these parts a layer in LAYERS: {sorted(parts - set(LAYERS))}"
    )


def test_no_part_imports_a_higher_layer():
    upward = []
    for path in PACKAGE.rglob("*.py"):
        source = part(module_name(path))
        if source == "conf":
            continue
        for target in imports(path):
            if part(target) != source and LAYERS[part(target)] > LAYERS[source]:
                upward.append(f"{module_name(path)} imports {target}")
    assert not upward, "imports of a higher layer:\n" + "\n".join(sorted(upward))


def test_no_import_cycle_between_parts():
    graph: dict[str, set[str]] = {}
    for path in PACKAGE.rglob("*.py"):
        source = part(module_name(path))
        graph.setdefault(source, set()).update(part(t) for t in imports(path) if part(t) != source)

    def reaches(start: str, goal: str, seen: set[str]) -> bool:
        return any(
            nxt == goal or (nxt not in seen and reaches(nxt, goal, seen | {nxt}))
            for nxt in graph.get(start, ())
        )

    cycles = [p for p in graph if reaches(p, p, {p})]
    assert not cycles, f"parts in an import cycle: {sorted(cycles)}"


def test_every_subpackage_is_installed():
    """pyproject.toml lists the packages by hand: a new subpackage must be in the list."""
    pyproject = (PACKAGE.parents[1] / "pyproject.toml").read_text()
    listed = set(
        re.findall(
            r'^\s*"(reco_lightning[\w.]*)",',
            pyproject.split("packages = [", 1)[1].split("]", 1)[0],
            re.M,
        )
    )
    on_disk = {module_name(p.parent / "__init__.py") for p in PACKAGE.rglob("__init__.py")}
    assert on_disk - {"reco_lightning.conf"} <= listed, sorted(on_disk - listed)


def test_the_walker_finds_a_lazy_relative_import_of_a_higher_layer(tmp_path):
    fake = tmp_path / "fake.py"
    fake.write_text(
        "import torch\n\ndef f():\n"
        "    from ..run.train import train\n"
        "    from .instance import nt_xent_loss\n"
    )
    found = imports(fake, name="reco_lightning.losses.fake")
    assert found == {"reco_lightning.run.train", "reco_lightning.losses.instance"}
    assert LAYERS[part("reco_lightning.run.train")] > LAYERS["losses"]


def function_level_imports(path: Path, name: str | None = None) -> list[str]:
    """``module:line`` of every import of this package inside a function or method of
    ``path`` (the module ``name``)."""
    tree = ast.parse(path.read_text())
    found = []
    for function in ast.walk(tree):
        if not isinstance(function, (ast.FunctionDef, ast.AsyncFunctionDef)):
            continue
        for node in ast.walk(function):
            relative = isinstance(node, ast.ImportFrom) and node.level > 0
            absolute = isinstance(node, (ast.Import, ast.ImportFrom)) and any(
                name.startswith("reco_lightning")
                for name in (
                    [a.name for a in node.names]
                    if isinstance(node, ast.Import)
                    else [node.module or ""]
                )
            )
            if relative or absolute:
                found.append(f"{name or module_name(path)}:{node.lineno}")
    return found


def test_no_function_imports_a_module_of_the_package():
    """A lazy import hides a dependency (and once hid a cycle): every import of the package's
    own modules is at the top of its module (``__main__`` answers ``--help`` before its
    imports, at module level, so that help stays free of Lightning)."""
    lazy = [hit for path in PACKAGE.rglob("*.py") for hit in function_level_imports(path)]
    assert not lazy, "imports of the package inside functions: " + ", ".join(sorted(lazy))


def test_the_lazy_import_finder_finds_one(tmp_path):
    fake = tmp_path / "fake.py"
    fake.write_text(
        "from . import instance\nimport torch\n\ndef f():\n    import json\n"
        "    from ..run.train import train\n"
    )
    assert function_level_imports(fake, "reco_lightning.losses.fake") == [
        "reco_lightning.losses.fake:6"
    ]
