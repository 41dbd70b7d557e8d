"""Training-step cost of each method with ReCo off and on, measured side by side.

    python benchmarks/step_cost.py                       # CPU defaults (a narrow ResNet-18)
    python benchmarks/step_cost.py --device cuda --width 64 --batch-size 256
    # the quality protocol
    OMP_NUM_THREADS=1 python benchmarks/step_cost.py --threads 1 --width 16 --image-size 16 \
        --batch-size 256 --precision bf16 --rounds 5 --data ../shared/data/cifar10
    python benchmarks/step_cost.py --methods simclr --reco negatives=batch  # a ReCo setting

Without ``--data``, model work only: the batches are made once, up front. With ``--data
ROOT`` (an image folder), the whole step: the next batch from the protocol's loader (PNG
decode and per-image views in the main process, ``num_workers=0``; a weak view as well with
ReCo on, as training draws it), then the model work. The off and on models of a method are
timed in alternating rounds in one process, so drift of the machine hits both alike; the
median step time of each is reported with the ratio on/off and the compute floor of RECO.md
(a backward pass counted as two forward passes; the floor counts model work only).
"""

from __future__ import annotations

import argparse
import statistics
import time
import warnings
from collections.abc import Callable, Iterator

import torch
from omegaconf import OmegaConf

from reco_lightning import BYOL, MoCo, SimCLR
from reco_lightning.data import SSLDataModule

#: name -> (class, extra constructor arguments, compute floor of the ReCo/base ratio)
METHODS = {
    "moco": (MoCo, {"symmetric": False}, 2.0),
    "moco-symmetric": (MoCo, {"symmetric": True}, 1.5),
    "simclr": (SimCLR, {}, 11 / 6),  # EMA teacher: weak and v2 target passes, mixed online pass
    "byol": (BYOL, {}, 1.5),
}


def build(name: str, reco: bool, args: argparse.Namespace) -> torch.nn.Module:
    cls, extra, _ = METHODS[name]
    queue = max(4096, args.batch_size)
    if cls is MoCo:
        extra = {**extra, "queue_size": queue}
    model = cls(
        num_classes=10,
        backbone=args.backbone,
        backbone_width=args.width,
        small_stem=args.image_size <= 64,
        reco={"bank_size": queue, "negatives_size": queue, **args.reco} if reco else None,
        **extra,
    )
    return model.to(args.device)


def loader_batches(root: str, reco: bool, args: argparse.Namespace) -> Iterator[dict]:
    """Endless training batches of the image folder ``root``, as the protocol's loader makes
    them."""
    data = SSLDataModule(
        name="imagefolder",
        root=root,
        image_size=args.image_size,
        batch_size=args.batch_size,
        num_workers=0,
        weak_view=reco,
        seed=0,
    )
    while True:  # a new epoch of the same sampler when one ends
        yield from data.train_dataloader()


def time_steps(
    model: torch.nn.Module,
    next_batch: Callable[[], dict],
    steps: int,
    device: str,
    precision: str = "32",
) -> list[float]:
    """Seconds per full step: the batch (``next_batch()``: a ready one, or the loader's next),
    forward, backward, optimizer step, the method's after-step hook."""
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    model.train()
    times = []
    for _ in range(steps):
        if device == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        batch = {
            key: [v.to(device) for v in value] if isinstance(value, list) else value.to(device)
            for key, value in next_batch().items()
            if key in ("strong", "weak", "label")
        }
        optimizer.zero_grad(set_to_none=True)
        with torch.autocast(
            torch.device(device).type, dtype=torch.bfloat16, enabled=precision == "bf16"
        ):
            loss = model.training_step(batch, 0)
        loss.backward()
        optimizer.step()
        model.on_train_batch_end(None, batch, 0)
        if device == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return times


def reco_setting(item: str) -> tuple[str, object]:
    """``negatives=batch`` -> ("negatives", "batch"); values read as OmegaConf reads a CLI
    dotlist, so ``1e-3`` is a float and ``null`` is None (plain YAML 1.1 keeps ``1e-3`` a
    string)."""
    key, sep, _ = item.partition("=")
    if not sep or not key:
        raise SystemExit(f"--reco {item!r}: write KEY=VALUE, e.g. --reco negatives=batch")
    return key, OmegaConf.to_container(OmegaConf.from_dotlist([item]))[key]


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(METHODS))
    parser.add_argument("--backbone", default="resnet18")
    parser.add_argument("--width", type=int, default=16, help="backbone width (64 = torchvision)")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--image-size", type=int, default=32)
    parser.add_argument("--steps", type=int, default=5, help="timed steps per round")
    parser.add_argument("--rounds", type=int, default=3, help="alternating off/on rounds")
    parser.add_argument("--device", default="cpu")
    parser.add_argument(
        "--precision",
        default="32",
        choices=["32", "bf16"],
        help="bf16: the step under bf16 autocast, as trainer.precision=bf16-mixed",
    )
    parser.add_argument(
        "--data",
        default=None,
        metavar="ROOT",
        help="an image folder: time the whole step, the loader's next batch included",
    )
    parser.add_argument(
        "--threads", type=int, default=None, help="torch threads (default: torch's)"
    )
    parser.add_argument(
        "--reco",
        nargs="+",
        default=[],
        metavar="KEY=VALUE",
        help="ReCo settings other than the method's defaults, as reco.KEY=VALUE on the CLI: "
        "--reco negatives=batch",
    )
    args = parser.parse_args()
    args.reco = dict(reco_setting(item) for item in args.reco)
    warnings.filterwarnings("ignore")  # self.log() without a Trainer
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)

    size = (args.batch_size, 3, args.image_size, args.image_size)
    batch = {
        "strong": [torch.randn(size, device=args.device), torch.randn(size, device=args.device)],
        "weak": torch.randn(size, device=args.device),
        "label": torch.randint(0, 10, (args.batch_size,), device=args.device),
    }
    work = f"whole step, data from {args.data}" if args.data else "model work only"
    print(
        f"# step cost ({work}): {args.backbone} width {args.width}, batch {args.batch_size}, "
        f"{args.image_size} px, {args.device}, {args.precision}, "
        f"{torch.get_num_threads()} threads, {args.rounds} rounds of {args.steps} steps"
        + (f", ReCo {args.reco}" if args.reco else "")
    )
    print(
        "| method | ReCo off (ms/step) | ReCo on (ms/step) | ratio on/off | compute floor | "
        "over floor |"
    )
    print("| --- | ---: | ---: | ---: | ---: | ---: |")
    for name in args.methods:
        models = {reco: build(name, reco, args) for reco in (False, True)}
        if args.data:
            loaders = {reco: loader_batches(args.data, reco, args) for reco in (False, True)}
            batches = {reco: (lambda it=loaders[reco]: next(it)) for reco in (False, True)}
        else:
            batches = {reco: (lambda: batch) for reco in (False, True)}
        for reco, model in models.items():  # warm-up: allocator, first-call overheads
            time_steps(model, batches[reco], 2, args.device, args.precision)
        samples: dict[bool, list[float]] = {False: [], True: []}
        for _ in range(args.rounds):
            for reco, model in models.items():
                samples[reco] += time_steps(
                    model, batches[reco], args.steps, args.device, args.precision
                )
        off, on = (statistics.median(samples[r]) for r in (False, True))
        floor = METHODS[name][2]
        ratio = on / off
        print(
            f"| {name} | {1000 * off:.0f} | {1000 * on:.0f} | {ratio:.2f} | {floor:.2f} | "
            f"{100 * (ratio / floor - 1):+.0f}% |"
        )


if __name__ == "__main__":
    main()
