"""One process per run directory: a run holds its directory's lock file while it trains, a
second process is refused with one line, a stale lock (its pid dead) is taken over, and the
lock goes when the run ends, however it ends."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from reco_lightning.errors import ConfigError, NonFiniteLossError
from reco_lightning.run.run_dir import (
    LOCK_FILE,
    hydra_files_only,
    lock_owner,
    remove_if_unused,
    run_lock,
)
from reco_lightning.run.train import train

from .conftest import run_cli


def dead_pid() -> int:
    """The pid of a process of this host that has ended (and been reaped)."""
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def write_lock(folder: Path, pid: int, host: str | None = None) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    record = {"pid": pid, "host": host or socket.gethostname(), "started": "earlier"}
    (folder / LOCK_FILE).write_text(json.dumps(record))
    return folder / LOCK_FILE


def test_the_lock_holds_this_process_and_goes_when_the_block_ends(tmp_path):
    with run_lock(tmp_path):
        record = json.loads((tmp_path / LOCK_FILE).read_text())
        assert record["pid"] == os.getpid()
        assert record["host"] == socket.gethostname()
        assert lock_owner(tmp_path)["pid"] == record["pid"]
    assert not (tmp_path / LOCK_FILE).exists() and lock_owner(tmp_path) is None


@pytest.mark.parametrize("stop", [RuntimeError("boom"), SystemExit(143), KeyboardInterrupt()])
def test_the_lock_goes_on_an_error_and_on_sigterms_exit(tmp_path, stop):
    with pytest.raises(type(stop)):
        with run_lock(tmp_path):
            raise stop
    assert list(tmp_path.iterdir()) == []


def test_a_second_holder_is_refused_with_the_owner_and_what_to_do(tmp_path):
    with run_lock(tmp_path):
        with pytest.raises(ConfigError) as refused:
            with run_lock(tmp_path):
                pass
        message = str(refused.value)
        assert str(tmp_path) in message and f"pid {os.getpid()}" in message
        assert "wait until it ends" in message and "stop that process" in message
        assert "\n" not in message
        assert (tmp_path / LOCK_FILE).is_file()  # the refused one left the owner's lock alone
    assert not (tmp_path / LOCK_FILE).exists()


def test_a_stale_lock_is_taken_over_silently(tmp_path):
    write_lock(tmp_path, dead_pid())
    assert lock_owner(tmp_path) is None
    with run_lock(tmp_path):
        assert lock_owner(tmp_path)["pid"] == os.getpid()
    assert list(tmp_path.iterdir()) == []


def test_an_empty_lock_long_after_its_creation_is_stale(tmp_path, monkeypatch):
    monkeypatch.setattr("reco_lightning.run.run_dir.LOCK_WRITE_GRACE_S", 0.2)
    (tmp_path / LOCK_FILE).write_text("")  # a process killed between creating and writing it
    time.sleep(0.3)
    with run_lock(tmp_path):
        pass
    assert list(tmp_path.iterdir()) == []


def test_another_hosts_lock_counts_as_held_and_names_the_file(tmp_path):
    write_lock(tmp_path, 12345, host="some-other-node")
    with pytest.raises(ConfigError, match=r"on host some-other-node.*remove .*\.run\.lock"):
        with run_lock(tmp_path):
            pass


def test_ranks_other_than_zero_take_no_lock_and_are_not_refused(tmp_path):
    with run_lock(tmp_path):
        with run_lock(tmp_path, take=False):  # a DDP worker in rank 0's run directory
            pass
        assert (tmp_path / LOCK_FILE).is_file()


def test_the_end_of_a_run_removes_only_its_own_lock(tmp_path):
    with run_lock(tmp_path):
        write_lock(tmp_path, 1)  # replaced meanwhile (by hand, say): not this run's to remove
    assert json.loads((tmp_path / LOCK_FILE).read_text())["pid"] == 1


def test_a_live_lock_makes_a_directory_used_and_a_stale_one_does_not(tmp_path):
    (tmp_path / ".hydra").mkdir()
    (tmp_path / "__main__.log").write_text("")
    with run_lock(tmp_path):
        assert not hydra_files_only(tmp_path)
        remove_if_unused(tmp_path)  # another process holds it: not removed
        assert tmp_path.is_dir()
    write_lock(tmp_path, dead_pid())  # a start killed with SIGKILL
    assert hydra_files_only(tmp_path)
    remove_if_unused(tmp_path)
    assert not tmp_path.exists()


def test_train_refuses_a_directory_another_process_holds(compose_config, tiny, tmp_path):
    """The lock taken after the run directory is resolved (here: past the CLI's checks)."""
    run = tmp_path / "run"
    run.mkdir()
    with run_lock(run):
        with pytest.raises(ConfigError, match=r"is in use by another run \(pid \d+"):
            train(compose_config("+method=moco", *tiny), run)
        assert sorted(p.name for p in run.iterdir()) == [LOCK_FILE]  # nothing written


def test_the_lock_is_gone_after_a_run_that_ended(compose_config, tiny, tmp_path):
    run = tmp_path / "run"
    train(compose_config("+method=moco", *tiny), run)
    assert (run / "summary.json").is_file() and not (run / LOCK_FILE).exists()


def test_the_lock_is_gone_after_a_run_that_failed(compose_config, tiny, tmp_path):
    run = tmp_path / "run"
    with pytest.raises(NonFiniteLossError):
        train(compose_config("+method=moco", *tiny, "optimizer.lr=1e30"), run)
    assert (run / "config.yaml").is_file() and not (run / LOCK_FILE).exists()


@pytest.mark.slow  # a subprocess: 10-30 s on an AVX2 CPU
def test_cli_second_process_is_refused_with_one_line_and_exit_2(tmp_path, tiny):
    run = tmp_path / "run"
    run.mkdir()
    with run_lock(run):
        before = sorted(p.name for p in run.iterdir())
        done = run_cli("+method=moco", *tiny, "resume=auto", f"hydra.run.dir={run}", cwd=tmp_path)
        after = sorted(p.name for p in run.iterdir())
    assert done.returncode == 2, done.stderr[-3000:]
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("reco_lightning: error: ")
    assert f"{run} is in use by another run (pid {os.getpid()}" in lines[0]
    assert "wait until it ends, or stop that process" in lines[0]
    assert after == before == [LOCK_FILE]  # refused before Hydra wrote into the directory


@pytest.mark.slow
def test_cli_run_takes_over_a_stale_lock_and_leaves_none(tmp_path, tiny):
    run = tmp_path / "run"
    write_lock(run, dead_pid())  # the lock of a run killed with SIGKILL
    done = run_cli("+method=moco", *tiny, "resume=auto", f"hydra.run.dir={run}", cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    assert (run / "summary.json").is_file() and not (run / LOCK_FILE).exists()


TRY_LOCK = """
import sys, time
from pathlib import Path
from reco_lightning.errors import ConfigError
from reco_lightning.run.run_dir import run_lock
time.sleep(max(0.0, float(sys.argv[2]) - time.time()))  # all try at once
try:
    with run_lock(Path(sys.argv[1])):
        print("took", flush=True)
        time.sleep(3)
except ConfigError:
    print("refused")
"""


@pytest.mark.slow
def test_of_processes_that_find_one_stale_lock_at_once_only_one_takes_it(tmp_path):
    write_lock(tmp_path, dead_pid())
    start = time.time() + 8  # after every process has imported the package
    children = [
        subprocess.Popen(
            [sys.executable, "-c", TRY_LOCK, str(tmp_path), str(start)],
            stdout=subprocess.PIPE,
            text=True,
        )
        for _ in range(4)
    ]
    said = sorted(child.communicate(timeout=120)[0].strip() for child in children)
    assert said == ["refused", "refused", "refused", "took"]
    assert not (tmp_path / LOCK_FILE).exists()
