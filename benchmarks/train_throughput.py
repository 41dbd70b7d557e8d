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

Before each model-only round the benchmark waits ``--settle`` seconds, so loader workers
have refilled their prefetch queue and sit idle: otherwise they would make the next batch
during the model-only steps, stealing CPU from them and hiding the data cost in the
denominator. The whole-step rounds pay for the workers' work, as training does. The
ratio column is the median of the per-round ratios; the range shows their spread.
"Waiting for data" is the share of the whole step spent in the loader's ``next``, the copy
and making the views, timed inside the same steps: it is the data's serial cost, free of
the step-to-step noise of the ratio (but not of the CPU that loader workers take from the
model while it computes, which only the ratio sees).
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
#: RECO.md's compute floor of a ReCo step over the plain step (a backward = two forwards)
COMPUTE_FLOOR = {
    "moco": 2.0,
    "simclr": 11 / 6,
    "byol": 1.5,
}  # SimCLR: ReCo's EMA teacher adds a v2 pass


def build(name: str, reco: bool, args: argparse.Namespace, image_size: int) -> torch.nn.Module:
    queue = 4096
    extra = {"queue_size": queue} if name == "moco" else {}
    model = METHODS[name](
        num_classes=10,
        backbone_width=args.width,
        small_stem=image_size <= 64,
        reco={"bank_size": queue, "negatives_size": queue} if reco else None,
        **extra,
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
        key: [v.to(device, non_blocking=True) for v in value]
        if isinstance(value, list)
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


def time_whole(model, optimizer, iterator, datamodule, steps, device) -> tuple[float, float]:
    """Seconds per whole step, and the part of it spent waiting for the batch and making
    its views (the loader's ``next``, the copy and ``on_after_batch_transfer``)."""
    sync(device)
    started = time.perf_counter()
    waiting = 0.0
    for _ in range(steps):
        asked = time.perf_counter()
        batch = to_device(next(iterator), datamodule, device)
        sync(device)
        waiting += time.perf_counter() - asked
        step(model, optimizer, batch)
    sync(device)
    return (time.perf_counter() - started) / steps, waiting / steps


def median_ratio(whole_times: list[float], model_times: list[float]) -> tuple[float, float, float]:
    """Median, min and max of the per-round ratios whole/model (rounds are paired in time,
    so slow drifts of the machine cancel)."""
    ratios = [w / m for w, m in zip(whole_times, model_times)]
    return statistics.median(ratios), min(ratios), max(ratios)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--root", default=None, help="image folder; default: the bundled digits at 32 px"
    )
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--methods", nargs="+", default=sorted(METHODS))
    parser.add_argument("--augment", nargs="+", default=["cpu", "device"])
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--width", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--reco", nargs="+", default=["off", "on"], choices=["off", "on"])
    parser.add_argument(
        "--settle",
        type=float,
        default=3.0,
        help="seconds to wait before each model-only round (loader workers go idle)",
    )
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    data = (
        dict(name="imagefolder", root=args.root)
        if args.root
        else dict(name="digits", image_size=32)
    )
    print(
        f"data: {args.root or 'digits at 32 px'}, batch {args.batch_size}, "
        f"ResNet-18 width {args.width}, device {args.device}, loader workers {args.workers}, "
        f"torch threads {torch.get_num_threads()}"
    )
    print(f"{args.rounds} rounds of {args.steps} steps each, settle {args.settle} s")
    print(
        "\n| method | ReCo | views made on | model (img/s) | whole step (img/s) | "
        "whole / model time | range | waiting for data |"
    )
    print("| --- | --- | --- | ---: | ---: | ---: | ---: | ---: |")
    whole_step: dict[tuple[str, bool, str], float] = {}
    for name in args.methods:
        for reco in [value == "on" for value in args.reco]:
            for augment in args.augment:
                torch.manual_seed(0)
                datamodule = SSLDataModule(
                    **data,
                    batch_size=args.batch_size,
                    weak_view=reco,
                    augment_on=augment,
                    num_workers=args.workers if augment == "cpu" else 0,
                    persistent_workers=True,
                    pin_memory=args.device.startswith("cuda"),
                )
                model = build(name, reco, args, datamodule.image_size)
                optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
                loader = datamodule.train_dataloader()
                iterator = iter(loader)
                fixed = to_device(next(iterator), datamodule, args.device)
                step(model, optimizer, fixed)  # warm-up
                model_times, whole_times, waits = [], [], []
                for round_index in range(args.rounds):

                    def model_round() -> None:
                        if augment == "cpu" and args.workers > 0:
                            time.sleep(args.settle)
                        model_times.append(
                            time_model(model, optimizer, fixed, args.steps, args.device)
                        )

                    def whole_round() -> None:
                        # loader is only read: naming it keeps ruff from reporting it unbound
                        # (F821, astral-sh/ruff#9858) because of the `del` after the rounds
                        nonlocal iterator, loader
                        try:
                            whole, wait = time_whole(
                                model, optimizer, iterator, datamodule, args.steps, args.device
                            )
                        except StopIteration:
                            iterator = iter(loader)
                            whole, wait = time_whole(
                                model, optimizer, iterator, datamodule, args.steps, args.device
                            )
                        whole_times.append(whole)
                        waits.append(wait)

                    # swap the order every round: neither kind always runs second
                    for run_round in (
                        (model_round, whole_round)
                        if round_index % 2 == 0
                        else (whole_round, model_round)
                    ):
                        run_round()
                model_s, whole_s = statistics.median(model_times), statistics.median(whole_times)
                ratio, low, high = median_ratio(whole_times, model_times)
                whole_step[name, reco, augment] = whole_s
                print(
                    f"| {name} | {'on' if reco else 'off'} | {augment} | "
                    f"{args.batch_size / model_s:,.1f} | {args.batch_size / whole_s:,.1f} | "
                    f"{ratio:.2f} | {low:.2f}-{high:.2f} | "
                    f"{statistics.median(waits) / whole_s:.1%} |",
                    flush=True,
                )
                del iterator, loader
    print_floor_table(whole_step, args)


def print_floor_table(
    whole_step: dict[tuple[str, bool, str], float], args: argparse.Namespace
) -> None:
    """Whole step with ReCo over the whole step without, against RECO.md's compute floor."""
    rows = [
        (name, augment)
        for name in args.methods
        for augment in args.augment
        if (name, True, augment) in whole_step and (name, False, augment) in whole_step
    ]
    if not rows:
        return
    print(
        "\n| method | views made on | whole step ReCo on / off | compute floor | over the floor |"
    )
    print("| --- | --- | ---: | ---: | ---: |")
    for name, augment in rows:
        ratio = whole_step[name, True, augment] / whole_step[name, False, augment]
        floor = COMPUTE_FLOOR[name]
        print(f"| {name} | {augment} | {ratio:.2f} | {floor:.2f} | {ratio / floor - 1:+.0%} |")


if __name__ == "__main__":
    main()
