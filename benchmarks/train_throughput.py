"""Images per second of the whole training step, data included, against model work alone.

    python benchmarks/train_throughput.py --root ../shared/data/cifar10            # 2 CPUs
    python benchmarks/train_throughput.py --root DIR --device cuda --methods moco   # a GPU

For each method with ReCo off and on, and each way of making views (``cpu``: per-image
pipeline in the loader with ``--workers`` processes; ``device``: whole batches drawn on the
device), it times

* **model**: forward, backward, optimizer step and the after-step hook on one batch made
  up front (what ``benchmarks/step_cost.py`` times), and
* **whole**: the same, with each step's batch taken from the loader, moved to the device
  and turned into views,

in alternating rounds in one process, and prints images per second of each and the ratio
whole/model (1.0 = data loading is fully hidden or free). The step-cost floor of ReCo over
the plain method is in ``step_cost.py``; this measures what data adds on top.
"""

from __future__ import annotations

import argparse
import statistics
import time
import warnings

import torch

from reco_lightning import BYOL, MoCo, SimCLR
from reco_lightning.data import SSLDataModule

METHODS = {"moco": MoCo, "simclr": SimCLR, "byol": BYOL}


def build(name: str, reco: bool, args: argparse.Namespace, image_size: int) -> torch.nn.Module:
    queue = 4096
    extra = {"queue_size": queue} if name == "moco" else {}
    model = METHODS[name](
        num_classes=10, backbone_width=args.width, small_stem=image_size <= 64,
        reco={"bank_size": queue, "negatives_size": queue} if reco else None, **extra,
    )
    return model.to(args.device).train()


def step(model: torch.nn.Module, optimizer: torch.optim.Optimizer, batch: dict) -> None:
    optimizer.zero_grad(set_to_none=True)
    loss = model.training_step(batch, 0)
    loss.backward()
    optimizer.step()
    model.on_train_batch_end(None, batch, 0)


def to_device(batch: dict, datamodule: SSLDataModule, device: str) -> dict:
    moved = {
        key: [v.to(device, non_blocking=True) for v in value] if isinstance(value, list)
        else value.to(device, non_blocking=True)
        for key, value in batch.items()
    }
    return datamodule.on_after_batch_transfer(moved, 0)


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def time_model(model, optimizer, batch, steps, device) -> float:
    sync(device)
    started = time.perf_counter()
    for _ in range(steps):
        step(model, optimizer, batch)
    sync(device)
    return (time.perf_counter() - started) / steps


def time_whole(model, optimizer, iterator, datamodule, steps, device) -> float:
    sync(device)
    started = time.perf_counter()
    for _ in range(steps):
        step(model, optimizer, to_device(next(iterator), datamodule, device))
    sync(device)
    return (time.perf_counter() - started) / steps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", default=None, help="image folder; default: the bundled digits at 32 px")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--methods", nargs="+", default=sorted(METHODS))
    parser.add_argument("--augment", nargs="+", default=["cpu", "device"])
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--width", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    data = dict(name="imagefolder", root=args.root) if args.root else dict(name="digits", image_size=32)
    print(f"data: {args.root or 'digits at 32 px'}, batch {args.batch_size}, ResNet-18 width {args.width}, "
          f"device {args.device}, loader workers {args.workers}, torch threads {torch.get_num_threads()}")
    print("\n| method | ReCo | views made on | model (img/s) | whole step (img/s) | whole / model time |")
    print("| --- | --- | --- | ---: | ---: | ---: |")
    for name in args.methods:
        for reco in (False, True):
            for augment in args.augment:
                torch.manual_seed(0)
                datamodule = SSLDataModule(
                    **data, batch_size=args.batch_size, weak_view=reco, augment_on=augment,
                    num_workers=args.workers if augment == "cpu" else 0,
                    persistent_workers=True, pin_memory=args.device.startswith("cuda"),
                )
                model = build(name, reco, args, datamodule.image_size)
                optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
                loader = datamodule.train_dataloader()
                iterator = iter(loader)
                fixed = to_device(next(iterator), datamodule, args.device)
                step(model, optimizer, fixed)  # warm-up
                model_times, whole_times = [], []
                for _ in range(args.rounds):
                    model_times.append(time_model(model, optimizer, fixed, args.steps, args.device))
                    try:
                        whole_times.append(time_whole(model, optimizer, iterator, datamodule, args.steps, args.device))
                    except StopIteration:
                        iterator = iter(loader)
                        whole_times.append(time_whole(model, optimizer, iterator, datamodule, args.steps, args.device))
                model_s, whole_s = statistics.median(model_times), statistics.median(whole_times)
                print(f"| {name} | {'on' if reco else 'off'} | {augment} | {args.batch_size / model_s:,.0f} | "
                      f"{args.batch_size / whole_s:,.0f} | {whole_s / model_s:.2f} |", flush=True)
                del iterator, loader


if __name__ == "__main__":
    main()
