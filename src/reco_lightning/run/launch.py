"""Starting the other local ranks of a DDP run without Hydra in them.

Lightning starts ranks 1..N-1 of a DDP run by re-running the script with its command line;
under Hydra each rank would make its own output directory, and inside a multirun sweep
(``-m``) re-launch the *whole sweep*. Instead, rank 0 (the process Hydra started) writes the
job's resolved config into its run directory and starts the other ranks as
``python -m reco_lightning.run.worker CONFIG RUN_DIR`` with ``LOCAL_RANK`` set, which Lightning
takes as processes created externally; they write nothing of their own. After the job the
process group is torn down, so the next job of a sweep starts a fresh one. Processes
started by torchrun or SLURM (``LOCAL_RANK``, ``RANK`` or ``SLURM_PROCID`` set) are left alone.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import lightning as L
import torch.distributed as dist
from omegaconf import DictConfig, OmegaConf

from ..utils.distributed import RANK_VARIABLES

#: what this module sets in rank 0 for the duration of one job
_JOB_VARIABLES = ("MASTER_ADDR", "MASTER_PORT", "WORLD_SIZE", "NODE_RANK", "LOCAL_RANK")
#: how long rank 0 may take to notice on its own that another rank stopped
GRACE_SECONDS = 60.0


def started_by_launcher() -> bool:
    """Whether torchrun, SLURM or this module started the process as one rank of many."""
    return any(name in os.environ for name in RANK_VARIABLES)


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _needs_local_ranks(trainer: L.Trainer) -> bool:
    """Whether Lightning would re-run the command line for the other local ranks."""
    from lightning.pytorch.strategies.launchers.subprocess_script import _SubprocessScriptLauncher

    launcher = getattr(trainer.strategy, "launcher", None)
    needed = isinstance(launcher, _SubprocessScriptLauncher) and trainer.num_devices > 1
    return needed and not started_by_launcher()


def _watch(children: list[subprocess.Popen], stop: threading.Event) -> None:
    """If a rank dies while rank 0 goes on, end the job: rank 0 would wait for it forever.

    A rank that stops on purpose (a signal, a non-finite loss) stops with rank 0, so rank 0
    gets a grace period to finish and report on its own first.
    """
    while not stop.wait(1.0):
        for child in children:
            code = child.poll()
            if code not in (None, 0) and not stop.wait(GRACE_SECONDS):
                print(
                    f"reco_lightning: a DDP rank exited with status {code}; stopping the job",
                    file=sys.stderr,
                )
                for other in children:
                    if other.poll() is None:
                        other.kill()
                os._exit(code if code > 0 else 1)


@contextmanager
def local_ranks(trainer: L.Trainer, cfg: DictConfig, output_dir: Path) -> Iterator[None]:
    """Start ranks 1..N-1 of this node for the duration of one job (no-op when not needed)."""
    if not _needs_local_ranks(trainer):
        yield
        return
    config_path = output_dir / ".ddp" / "config.yaml"
    config_path.parent.mkdir(parents=True, exist_ok=True)
    config_path.write_text(OmegaConf.to_yaml(cfg, resolve=True))
    saved = {name: os.environ.get(name) for name in (*_JOB_VARIABLES, "RECO_LOCAL_WORLD_SIZE")}
    os.environ.update(
        MASTER_ADDR=os.environ.get("MASTER_ADDR", "127.0.0.1"),
        MASTER_PORT=str(_free_port()) if saved["MASTER_PORT"] is None else saved["MASTER_PORT"],
        WORLD_SIZE=str(trainer.num_devices * trainer.num_nodes),
        NODE_RANK=os.environ.get("NODE_RANK", "0"),
        LOCAL_RANK="0",
        RECO_LOCAL_WORLD_SIZE=str(trainer.num_devices),
    )
    command = [sys.executable, "-m", "reco_lightning.run.worker", str(config_path), str(output_dir)]
    children = [
        subprocess.Popen(command, env=dict(os.environ, LOCAL_RANK=str(local_rank)))
        for local_rank in range(1, trainer.num_devices)
    ]
    stop = threading.Event()
    threading.Thread(target=_watch, args=(children, stop), daemon=True).start()
    try:
        yield
        stop.set()
        for child in children:
            child.wait()
    finally:
        stop.set()
        for child in children:
            if child.poll() is None:
                child.terminate()
                try:
                    child.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    child.kill()
        if dist.is_available() and dist.is_initialized():
            dist.destroy_process_group()
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
