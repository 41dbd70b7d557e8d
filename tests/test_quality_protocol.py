"""The validation-first order of ``benchmarks/quality_v2.py`` (protocol ``cpu16v2``): a test
cell with ReCo on runs only with the settings committed validation cells chose."""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import quality_v2 as q  # noqa: E402

DATA = "../shared/data/cifar10"


def _results(method: str, knn: dict[str, tuple[float, float]]) -> dict[str, dict]:
    """Validation results of ``method``: setting -> kNN of seeds 0 and 1; the rest at 0.1."""
    results = {}
    for cell in q.val_cells(method):
        value = knn.get(cell.setting, (0.1, 0.1))[cell.seed]
        results[cell.name] = {
            "curve": [{"epoch": 19, "knn": 0.0}, {"epoch": 20, "knn": value}],
            "final_knn": 1.0 - value,  # the best epoch's evaluation: not what decides
            "reco_config": q.resolved_reco(cell, DATA),
        }
    return results


def test_the_choice_reads_the_last_epoch_not_the_best_epochs_evaluation():
    results = _results("moco", {"default": (0.5, 0.5), "warmup-0": (0.6, 0.6)})
    assert q.validation_choice("moco", results).best == "warmup-0"
    assert q.validation_score(results["val-moco-warmup-0-s0"]) == 0.6


@pytest.fixture(autouse=True)
def _all_committed(monkeypatch):
    monkeypatch.setattr(q, "committed", lambda path: True)


def test_the_choice_is_the_best_mean_of_both_seeds_and_never_off():
    results = _results(
        "byol", {"off": (0.9, 0.9), "default": (0.5, 0.3), "scale-relative": (0.45, 0.40)}
    )
    choice = q.validation_choice("byol", results)
    assert choice.best == "scale-relative" and not choice.missing
    assert (
        choice.reco["scale"] == "relative" and choice.reco["mix"] == "mixup"
    )  # auto made BYOL's choice


def test_a_test_cell_runs_with_the_chosen_defaults():
    results = _results("moco", {"default": (0.5, 0.5)})
    q.check_test_cell(q.Cell("test-moco-on-s0", "moco", True, 0), DATA, results)  # no refusal


def test_a_test_cell_is_refused_when_validation_chose_another_setting():
    results = _results("moco", {"default": (0.5, 0.5), "negatives-batch": (0.6, 0.55)})
    with pytest.raises(
        q.CellRefused, match=r"negatives='queue' against 'batch'.*'negatives-batch'"
    ):
        q.check_test_cell(q.Cell("test-moco-on-s0", "moco", True, 0), DATA, results)


@pytest.mark.parametrize(
    "setting, attribute, value, differing",
    [
        ("global-only", "reco_weights", (1.0, 0.0), "w_local=1.0 against 0.0"),
        ("teacher-online", "reco_teacher", "online", "teacher='auto' against 'online'"),
        ("warmup-0", "reco_warmup_epochs", 0.0, "warmup_epochs=2.0 against 0.0"),
    ],
)
def test_a_choice_made_the_methods_class_attribute_clears_its_test_cells(
    monkeypatch, setting, attribute, value, differing
):
    """Validation's winner becomes the method's own default (a class attribute): then, and
    only then, the test cell trains with what validation chose."""
    from reco_lightning.methods import METHODS

    results = _results("simclr", {"default": (0.5, 0.5), setting: (0.6, 0.6)})
    cell = q.Cell("test-simclr-on-s0", "simclr", True, 0)
    with pytest.raises(q.CellRefused, match=re.escape(differing)) as refused:
        q.check_test_cell(cell, DATA, results)
    assert re.search(rf"{attribute} = {re.escape(repr(value))}", str(refused.value))
    monkeypatch.setattr(METHODS["simclr"], attribute, value)
    q.check_test_cell(cell, DATA, results)  # no refusal


def test_a_test_cell_is_refused_before_validation_is_complete_or_committed(monkeypatch):
    results = _results("simclr", {"default": (0.5, 0.5)})
    incomplete = dict(results)
    incomplete.pop("val-simclr-warmup-0-s1")
    cell = q.Cell("test-simclr-on-s0", "simclr", True, 0)
    with pytest.raises(q.CellRefused, match="not complete.*val-simclr-warmup-0-s1"):
        q.check_test_cell(cell, DATA, incomplete)
    monkeypatch.setattr(q, "committed", lambda path: "warmup" not in path.name)
    with pytest.raises(q.CellRefused, match="not committed"):
        q.check_test_cell(cell, DATA, results)


def test_reco_off_test_cells_and_validation_cells_need_no_choice():
    q.check_test_cell(q.Cell("test-byol-off-s0", "byol", False, 0), DATA, {})
    q.check_test_cell(q.val_cells("byol")[0], DATA, {})


def test_every_group_names_each_cell_once_and_validation_never_reads_test_images():
    cells = [
        cell for name, group in q.groups().items() if not name.startswith("val-") for cell in group
    ]
    assert len({cell.name for cell in cells}) == len(cells)
    assert all(cell.split == "trainval" for cell in q.val_cells())
    assert len(q.test_cells()) == 18 and {c.seed for c in q.test_cells()} == {0, 1, 2}


def test_validation_cells_run_what_they_recorded_and_the_test_split_one_precision():
    """Validation ran under bf16 (each committed file records it); every test-split cell
    runs float32, so each of its comparisons stays within one precision."""
    for cell in q.val_cells():
        recorded = q.RESULTS / f"{cell.name}.json"
        assert json.loads(recorded.read_text())["protocol_overrides"] == cell.protocol_overrides()
    test_split = [c for n, g in q.groups().items() for c in g if c.split == "test"]
    assert len(test_split) == 18 + 6 + 6 + 6
    for cell in test_split:
        precisions = [o for o in cell.arguments(DATA) if o.startswith("trainer.precision=")]
        assert precisions == ["trainer.precision=32-true"], cell.name


def test_test_cells_refuse_code_whose_last_checkpoint_is_the_best_epoch(monkeypatch):
    """Before RunCheckpoints, last.ckpt was the best epoch by the monitored kNN: on the test
    split a pick on the test images. Test cells refuse such code."""
    import subprocess

    def commit(ref: str) -> str:
        found = subprocess.run(
            ["git", "rev-parse", "--verify", "--quiet", f"{ref}^{{commit}}"],
            capture_output=True,
            text=True,
            cwd=q.ROOT,
        )
        if found.returncode != 0:
            pytest.skip(f"commit {ref} is not in this checkout's history")
        return found.stdout.strip()

    monkeypatch.setattr(q, "TEST_CODE", commit("fee94d9"))
    with pytest.raises(q.CellRefused, match="predates RunCheckpoints"):
        q.code_for(q.test_cells()[0])
    monkeypatch.setattr(q, "TEST_CODE", commit("65641ed"))
    assert q.code_for(q.test_cells()[0]) == commit("65641ed")


def test_same_training_tells_a_changed_loss_from_a_measurement_in_another_float_order():
    import same_training as s

    run = [{"train/loss_step": "0.5", "train/grad_norm_method": "1.6455736"}]
    reordered = [{"train/loss_step": "0.5", "train/grad_norm_method": "1.6455737"}]
    changed = [{"train/loss_step": "0.50000006", "train/grad_norm_method": "1.6455736"}]
    assert s.differences(run, reordered) == []
    assert s.bit_identical(run, reordered) == (1, 2)
    assert s.differences(run, changed) == ["row 0 train/loss_step: '0.5' against '0.50000006'"]
    assert s.differences(run, run + run) == ["1 rows against 2"]
