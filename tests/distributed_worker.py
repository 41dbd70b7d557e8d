"""One rank of a two-process gloo job, started by ``tests/test_distributed.py``.

``python tests/distributed_worker.py queues OUT_DIR OVERRIDES...``
    trains through :func:`reco_lightning.run.train.train` with ``strategy=ddp_cpu`` and saves
    every queue buffer of this rank to ``OUT_DIR/queues_rank{r}.pt``.
``python tests/distributed_worker.py knn OUT_DIR``
    feeds this rank's uneven share of a fixed bank and query set to a ``KNNMonitor`` and
    saves what ``compute`` returns (gathered over both ranks).
``python tests/distributed_worker.py simclr-grad OUT_DIR``
    computes SimCLR's loss on this rank's half of a fixed global batch, back-propagates,
    averages the gradients over ranks as DDP does, and saves loss and gradients.

The environment (MASTER_ADDR, MASTER_PORT, WORLD_SIZE, LOCAL_RANK) comes from the test.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import lightning as L
import torch
import torch.distributed as dist


class DumpQueues(L.Callback):
    def __init__(self, path: Path) -> None:
        self.path = path

    def on_train_end(self, trainer, pl_module) -> None:
        buffers = {
            name: buffer.detach().cpu().clone()
            for name, buffer in pl_module.named_buffers()
            if name.endswith(("features", "pointer", "num_enqueued"))
        }
        buffers["relation bank keys enqueued"] = int(pl_module.reco.bank.num_enqueued)
        torch.save(buffers, self.path)


def run_queues(out_dir: Path, overrides: list[str]) -> None:
    from hydra import compose, initialize_config_module

    from reco_lightning.run.train import train

    with initialize_config_module(config_module="reco_lightning.conf", version_base="1.3"):
        cfg = compose(config_name="config", overrides=overrides)
    rank = int(os.environ["LOCAL_RANK"])
    train(cfg, out_dir / "run", callbacks=[DumpQueues(out_dir / f"queues_rank{rank}.pt")])


def simclr_batch() -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(1)
    return torch.randn(8, 3, 16, 16, generator=generator), torch.randn(
        8, 3, 16, 16, generator=generator
    )


def simclr_model() -> torch.nn.Module:
    from reco_lightning.methods import METHODS

    torch.manual_seed(0)
    model = METHODS["simclr"](num_classes=10, backbone_width=8, small_stem=True, proj_hidden_dim=32)
    return model.eval()  # BatchNorm from running statistics: each image's output is its own


def run_simclr_grad(out_dir: Path) -> None:
    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    model = simclr_model()
    view1, view2 = simclr_batch()
    share = view1.shape[0] // world
    rows = slice(rank * share, (rank + 1) * share)
    loss = model.method_step(view1[rows], view2[rows]).loss
    loss.backward()
    for param in model.parameters():
        if param.grad is not None:
            dist.all_reduce(param.grad)
            param.grad /= world
    mean_loss = loss.detach().clone()
    dist.all_reduce(mean_loss)
    mean_loss /= world
    if rank == 0:
        grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
        torch.save({"loss": mean_loss, "grads": grads}, out_dir / "simclr_grad.pt")
    dist.destroy_process_group()


def knn_data() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Bank and queries of 9 and 5 images: shares of 5/4 and 3/2 images per rank."""
    generator = torch.Generator().manual_seed(3)
    bank = torch.randn(9, 6, generator=generator)
    queries = torch.randn(5, 6, generator=generator)
    return bank, torch.arange(9) % 3, queries, torch.tensor([0, 1, 2, 0, 1])


def run_knn(out_dir: Path) -> None:
    from reco_lightning.metrics import KNNMonitor

    dist.init_process_group("gloo")
    rank = dist.get_rank()
    bank, bank_labels, queries, query_labels = knn_data()
    bank_rows, query_rows = (slice(0, 5), slice(0, 3)) if rank == 0 else (slice(5, 9), slice(3, 5))
    monitor = KNNMonitor(num_classes=3, k=3)
    monitor.update(bank[bank_rows], bank_labels[bank_rows], bank=True)
    monitor.update(queries[query_rows], query_labels[query_rows], bank=False)
    result = monitor.compute()
    torch.save(result._asdict(), out_dir / f"knn_rank{rank}.pt")
    dist.destroy_process_group()


if __name__ == "__main__":
    torch.set_num_threads(1)
    mode, out = sys.argv[1], Path(sys.argv[2])
    if mode == "queues":
        run_queues(out, sys.argv[3:])
    elif mode == "knn":
        run_knn(out)
    elif mode == "simclr-grad":
        run_simclr_grad(out)
    else:
        raise SystemExit(f"unknown mode {mode}")
