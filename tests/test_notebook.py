"""The ReCoMixin tutorial notebook runs from top to bottom and draws its loss plot."""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import pytest

nbformat = pytest.importorskip(
    "nbformat", reason="nbformat is not installed (pip install -e '.[dev]')"
)
nbclient = pytest.importorskip(
    "nbclient", reason="nbclient is not installed (pip install -e '.[dev]')"
)
pytest.importorskip(
    "ipykernel", reason="ipykernel is not installed, so no kernel can run the notebook"
)

NOTEBOOK = Path(__file__).resolve().parents[1] / "notebooks" / "reco_mixin_tutorial.ipynb"


def _load():
    return nbformat.read(NOTEBOOK, as_version=4)


def _remove_log_dir(notebook) -> None:
    """Delete the temporary log directory the notebook announced ("logs go to ...")."""
    for cell in notebook.cells:
        for output in cell.get("outputs", []):
            for line in output.get("text", "").splitlines():
                if line.startswith("logs go to "):
                    path = Path(line.removeprefix("logs go to ").strip())
                    if path.parent == Path(tempfile.gettempdir()) and path.name.startswith(
                        "reco_tutorial_"
                    ):
                        shutil.rmtree(path, ignore_errors=True)


def test_notebook_is_stored_without_outputs():
    notebook = _load()
    for cell in notebook.cells:
        if cell.cell_type == "code":
            assert not cell.outputs and cell.execution_count is None, (
                "store the tutorial without outputs: rerun `python notebooks/make_tutorial.py`"
            )


@pytest.mark.slow  # a subprocess: 10-30 s on an AVX2 CPU
def test_notebook_executes_and_plots(tmp_path, monkeypatch):
    # A non-inline MPLBACKEND in the caller's environment (e.g. Agg on CI) would reach the
    # kernel; the notebook also says `%matplotlib inline`, this just keeps the env clean.
    monkeypatch.delenv("MPLBACKEND", raising=False)
    # One intra-op thread: the network is tiny, and on a busy CI machine several OpenMP
    # threads spin-waiting for a shared core make each step tens of times slower.
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    notebook = _load()
    client = nbclient.NotebookClient(
        notebook,
        timeout=600,
        kernel_name="python3",
        resources={"metadata": {"path": str(tmp_path)}},
    )
    try:
        client.execute()  # raises CellExecutionError, with the failing cell, if any cell fails
    finally:
        _remove_log_dir(notebook)

    errors = [
        o
        for c in notebook.cells
        if c.cell_type == "code"
        for o in c.outputs
        if o.output_type == "error"
    ]
    assert not errors

    plot_cells = [c for c in notebook.cells if "plot" in c.metadata.get("tags", [])]
    assert len(plot_cells) == 1, "the plotting cell is tagged 'plot'"
    images = [o for o in plot_cells[0].outputs if "image/png" in o.get("data", {})]
    assert images, f"the plotting cell showed no image: {plot_cells[0].outputs}"

    # The notebook logs into its own temporary directory, never into the working directory.
    assert not any(tmp_path.iterdir()), sorted(p.name for p in tmp_path.iterdir())


def test_the_user_module_needs_little_glue():
    """The tutorial's whole SimSiam-with-ReCo module is at most 30 lines of code, and its
    ReCo glue is the three things the README promises: no hook, no setup call."""
    source = next(cell.source for cell in _load().cells if "class SimSiamReCo" in cell.source)
    code = [
        line for line in source.splitlines() if line.strip() and not line.strip().startswith("#")
    ]
    assert len(code) <= 30, f"{len(code)} lines"
    assert "def on_train_batch_end" not in source and "setup_reco" not in source
    glue = [line for line in code if "reco" in line.lower() and "def " not in line]
    assert len(glue) <= 4, glue
