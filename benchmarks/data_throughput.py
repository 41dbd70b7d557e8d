"""Images per second of view generation: per-image workers against batched on the device.

    python benchmarks/data_throughput.py --root ../shared/data/cifar10  # CIFAR-10 folder
    python benchmarks/data_throughput.py                                # bundled digits at 32 px

For 2 views (a method alone) and 3 views (with ReCo's weak view) it times

* ``cpu/workers=N``: the per-image torchvision pipeline in a DataLoader with N worker
  processes (N=0: in the main process), as ``dataset.augment_on=cpu`` trains;
* ``device``: rows of the in-memory uint8 tensor gathered by the loader, then every view
  drawn for the whole batch by kornia on the device (``dataset.augment_on=device``; here the
  CPU unless a GPU is present),

in alternating rounds in one process, and prints images per second and the ratio of each
to the fastest per-image setting.
"""

from __future__ import annotations

import argparse
import statistics
import time
from itertools import islice

import torch

from reco_lightning.data import SSLDataModule


def images_per_second(datamodule: SSLDataModule, batches: int, device: torch.device) -> float:
    loader = datamodule.train_dataloader()
    iterator = iter(loader)
    next(iterator)  # start workers / warm up outside the timing
    started = time.perf_counter()
    count = 0
    for batch in islice(iterator, batches):
        if "images" in batch:
            batch = {
                "images": batch["images"].to(device, non_blocking=True),
                "label": batch["label"],
            }
            views = datamodule.on_after_batch_transfer(batch, 0)
            views["strong"][0].sum().item()  # wait for the device
        count += batch["label"].shape[0]
    return count / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--root", default=None, help="image folder (train/ and val/); default: digits"
    )
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--batches", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 1, 2])
    args = parser.parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    data = (
        dict(name="imagefolder", root=args.root)
        if args.root
        else dict(name="digits", image_size=32)
    )
    print(
        f"data: {args.root or 'digits at 32 px'}, batch {args.batch_size}, "
        f"device views on {device}, torch threads {torch.get_num_threads()}"
    )
    results: dict[str, list[float]] = {}
    setups = {}
    for views in (2, 3):
        weak = views == 3
        for workers in args.workers:
            setups[f"{views} views, cpu/workers={workers}"] = SSLDataModule(
                **data,
                batch_size=args.batch_size,
                weak_view=weak,
                num_workers=workers,
                persistent_workers=False,
                augment_on="cpu",
            )
        setups[f"{views} views, device"] = SSLDataModule(
            **data, batch_size=args.batch_size, weak_view=weak, augment_on="device"
        )
    for _ in range(args.rounds):
        for name, datamodule in setups.items():
            results.setdefault(name, []).append(images_per_second(datamodule, args.batches, device))
    print(f"\n| setting | images/s (median of {args.rounds}) | vs best per-image |")
    print("| --- | ---: | ---: |")
    for views in (2, 3):
        best_cpu = max(
            statistics.median(v) for k, v in results.items() if k.startswith(f"{views} views, cpu")
        )
        for name, values in results.items():
            if name.startswith(f"{views} views"):
                median = statistics.median(values)
                print(f"| {name} | {median:,.0f} | {median / best_cpu:.2f} |")


if __name__ == "__main__":
    main()
