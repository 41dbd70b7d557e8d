"""The fast-path settings, each against its default, measured side by side in one process.

    python benchmarks/fast_paths.py optimizer             # optimizer.kernel: loop, foreach, fused
    python benchmarks/fast_paths.py compile               # backbone.compile: eager vs torch.compile
    python benchmarks/fast_paths.py workers --root DIR    # dataset.persistent_workers: off vs on
    python benchmarks/fast_paths.py copies --device cuda  # dataset.pin_memory + non-blocking copies

* **optimizer**: the time of ``optimizer.step()`` alone over the parameters of a method
  (backbone, heads, probe; BYOL's 4096-wide heads by default), with fixed random gradients,
  for each ``optimizer.kernel`` of SGD and LARS, alternating kernels step by step.
* **compile**: one MoCo training step (forward, backward, SGD step, EMA and queue update)
  with the backbones eager and with ``backbone.compile=true``; prints the one-off compile
  time and the steady-state step times in alternating rounds.
* **workers**: three whole passes over the training set (an epoch each) with loader
  workers, without and with ``persistent_workers``: the wait for each pass's first batch
  (which includes the worker start-up that persistent workers pay only once) and the time
  of all three. Cutting passes short (``--batches``) makes persistent workers look slow:
  the next pass first waits for the batches they were still preparing.
* **copies**: moving a training batch (three views, uint8 and float) to the GPU from
  pageable and from pinned memory, blocking and ``non_blocking``. Lightning copies with
  ``non_blocking=True`` already; pinning is what makes those copies asynchronous, so
  ``dataset.pin_memory`` is the setting. Needs a GPU.
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time
import warnings
from collections.abc import Callable

import torch

from reco_lightning import BYOL, MoCo, SimCLR
from reco_lightning.data import SSLDataModule
from reco_lightning.utils.optim import build_optimizer, split_decay_groups

METHODS = {"moco": MoCo, "simclr": SimCLR, "byol": BYOL}


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def timed(fn: Callable[[], object], device: str) -> float:
    sync(device)
    started = time.perf_counter()
    fn()
    sync(device)
    return time.perf_counter() - started


def alternate(
    candidates: dict[str, Callable[[], object]], rounds: int, device: str
) -> dict[str, float]:
    """Median seconds of each candidate, run one after another in every round so a drift of
    the machine's speed hits all of them alike."""
    times: dict[str, list[float]] = {name: [] for name in candidates}
    for _ in range(rounds):
        for name, fn in candidates.items():
            times[name].append(timed(fn, device))
    return {name: statistics.median(values) for name, values in times.items()}


def bench_optimizer(args: argparse.Namespace) -> None:
    torch.manual_seed(0)
    model = METHODS[args.method](num_classes=10, backbone_width=args.width, small_stem=True).to(
        args.device
    )
    for param in model.parameters():
        param.grad = torch.randn_like(param) * 1e-2
    tensors = sum(1 for p in model.parameters())
    print(
        f"optimizer.step() over {args.method}'s {tensors} tensors "
        f"({sum(p.numel() for p in model.parameters()) / 1e6:.1f} M parameters), "
        f"width {args.width}, {args.device}, {torch.get_num_threads()} threads, "
        f"median of {args.rounds} rounds\n"
    )
    print("| optimizer | kernel | step (ms) | vs loop |")
    print("| --- | --- | ---: | ---: |")
    for name, kernels in (("sgd", ("loop", "foreach", "fused")), ("lars", ("loop", "foreach"))):
        candidates = {}
        for kernel in kernels:
            replica = copy.deepcopy(model)  # each kernel moves its own copy of the weights
            for source, target in zip(model.parameters(), replica.parameters()):
                target.grad = source.grad.clone()
            optimizer = build_optimizer(name, split_decay_groups(replica), 0.1, 1e-5, kernel=kernel)
            optimizer.step()  # creates the momentum buffers
            candidates[kernel] = optimizer.step
        medians = alternate(candidates, args.rounds, args.device)
        for kernel, seconds in medians.items():
            print(
                f"| {name} | {kernel} | {seconds * 1e3:.1f} | {seconds / medians['loop']:.2f} |",
                flush=True,
            )


def bench_compile(args: argparse.Namespace) -> None:
    warnings.filterwarnings("ignore")
    batch = {
        "strong": [
            torch.randn(args.batch_size, 3, args.image_size, args.image_size, device=args.device)
            for _ in range(2)
        ],
        "label": torch.randint(10, (args.batch_size,), device=args.device),
    }
    models = {}
    for compiled in (False, True):
        torch.manual_seed(0)
        model = (
            MoCo(
                num_classes=10,
                backbone_width=args.width,
                small_stem=True,
                queue_size=4096,
                compile_backbone=compiled,
            )
            .to(args.device)
            .train()
        )
        model.setup("fit")
        optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
        models["compiled" if compiled else "eager"] = (model, optimizer)

    def step(model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> None:
        optimizer.zero_grad(set_to_none=True)
        model.training_step(batch, 0).backward()
        optimizer.step()
        model.on_train_batch_end(None, batch, 0)

    first = {
        name: timed(lambda m=m, o=o: step(m, o), args.device) for name, (m, o) in models.items()
    }
    medians = alternate(
        {name: (lambda m=m, o=o: step(m, o)) for name, (m, o) in models.items()},
        args.rounds,
        args.device,
    )
    print(
        f"MoCo step, ResNet-18 width {args.width}, batch {args.batch_size}, {args.image_size} px, "
        f"{args.device}, {torch.get_num_threads()} threads, median of {args.rounds} rounds\n"
    )
    print("| backbone | first step (s, includes compiling) | step (ms) | vs eager |")
    print("| --- | ---: | ---: | ---: |")
    for name, seconds in medians.items():
        print(
            f"| {name} | {first[name]:.1f} | {seconds * 1e3:.0f} | "
            f"{seconds / medians['eager']:.2f} |"
        )


def bench_workers(args: argparse.Namespace) -> None:
    data = (
        dict(name="imagefolder", root=args.root)
        if args.root
        else dict(name="digits", image_size=32)
    )
    print(
        f"data: {args.root or 'digits at 32 px'}, batch {args.batch_size}, {args.workers} workers, "
        f"{f'first {args.batches} batches' if args.batches else 'whole epochs'} per pass, "
        "3 passes\n"
    )
    print(
        "| persistent_workers | first batch, pass 1 (s) | first batch, passes 2-3 (s) | "
        "3 passes (s) |"
    )
    print("| --- | ---: | ---: | ---: |")
    for persistent in (False, True):
        datamodule = SSLDataModule(
            **data,
            batch_size=args.batch_size,
            num_workers=args.workers,
            persistent_workers=persistent,
            weak_view=True,
        )
        loader = datamodule.train_dataloader()
        waits, started = [], time.perf_counter()
        for _ in range(3):
            begin = time.perf_counter()
            for index, _batch in enumerate(loader):
                if index == 0:
                    waits.append(time.perf_counter() - begin)
                if args.batches and index + 1 >= args.batches:
                    break
        total = time.perf_counter() - started
        print(
            f"| {persistent} | {waits[0]:.2f} | {statistics.mean(waits[1:]):.2f} | {total:.1f} |",
            flush=True,
        )
        del loader


def bench_copies(args: argparse.Namespace) -> None:
    if not args.device.startswith("cuda") or not torch.cuda.is_available():
        raise SystemExit("copies: host-to-device copies need a GPU (--device cuda)")
    views = 3
    shapes = {"uint8": torch.uint8, "float32": torch.float32}
    print(
        f"{views} views x batch {args.batch_size} x {args.image_size} px to "
        f"{torch.cuda.get_device_name()}, median of {args.rounds} rounds\n"
    )
    print("| dtype | host memory | non_blocking | copy (ms) | vs pageable blocking |")
    print("| --- | --- | --- | ---: | ---: |")
    for label, dtype in shapes.items():
        pageable = [
            torch.ones(args.batch_size, 3, args.image_size, args.image_size, dtype=dtype)
            for _ in range(views)
        ]
        pinned = [t.pin_memory() for t in pageable]
        candidates = {
            ("pageable", False): lambda: [t.to(args.device) for t in pageable],
            ("pageable", True): lambda: [t.to(args.device, non_blocking=True) for t in pageable],
            ("pinned", False): lambda: [t.to(args.device) for t in pinned],
            ("pinned", True): lambda: [t.to(args.device, non_blocking=True) for t in pinned],
        }
        medians = alternate(candidates, args.rounds, args.device)
        base = medians[("pageable", False)]
        for (memory, non_blocking), seconds in medians.items():
            print(
                f"| {label} | {memory} | {non_blocking} | {seconds * 1e3:.2f} | "
                f"{seconds / base:.2f} |"
            )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("what", choices=["optimizer", "compile", "workers", "copies"])
    parser.add_argument("--device", default="cpu")
    parser.add_argument(
        "--method", default="byol", choices=sorted(METHODS), help="optimizer: whose parameters"
    )
    parser.add_argument("--width", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--image-size", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument(
        "--root", default=None, help="workers: image folder (default: the bundled digits)"
    )
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument(
        "--batches", type=int, default=0, help="workers: batches per pass (0: whole epochs)"
    )
    args = parser.parse_args()
    {
        "optimizer": bench_optimizer,
        "compile": bench_compile,
        "workers": bench_workers,
        "copies": bench_copies,
    }[args.what](args)


if __name__ == "__main__":
    main()
