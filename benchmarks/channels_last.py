"""Backbone forward+backward time, contiguous against channels-last memory format.

    python benchmarks/channels_last.py                          # 2 CPUs: ResNet-18, width 64, 32 px
    python benchmarks/channels_last.py --device cuda --batch-size 256

Both layouts are timed in alternating rounds in one process; the median step time of each
and the ratio channels-last/contiguous are printed (below 1 = channels-last is faster).
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from reco_lightning.models import build_backbone


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--width", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--image-size", type=int, default=32)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    torch.manual_seed(0)
    times: dict[bool, list[float]] = {False: [], True: []}
    nets = {}
    for channels_last in (False, True):
        net, _ = build_backbone("resnet18", args.width, args.image_size <= 64)
        nets[channels_last] = net.to(
            args.device,
            memory_format=torch.channels_last if channels_last else torch.contiguous_format,
        )
    images = torch.randn(args.batch_size, 3, args.image_size, args.image_size, device=args.device)
    for _ in range(args.rounds):
        for channels_last, net in nets.items():
            x = images.contiguous(memory_format=torch.channels_last) if channels_last else images
            net(x).sum().backward()  # warm-up
            if args.device.startswith("cuda"):
                torch.cuda.synchronize()
            started = time.perf_counter()
            for _ in range(args.steps):
                net.zero_grad(set_to_none=True)
                net(x).sum().backward()
            if args.device.startswith("cuda"):
                torch.cuda.synchronize()
            times[channels_last].append((time.perf_counter() - started) / args.steps)
    contiguous, channels_last = statistics.median(times[False]), statistics.median(times[True])
    print(
        f"ResNet-18 width {args.width}, batch {args.batch_size}, {args.image_size} px, "
        f"{args.device}, torch threads {torch.get_num_threads()}"
    )
    print(
        f"contiguous    {contiguous:.3f} s/step\nchannels-last {channels_last:.3f} s/step\n"
        f"ratio         {channels_last / contiguous:.2f}"
    )


if __name__ == "__main__":
    main()
