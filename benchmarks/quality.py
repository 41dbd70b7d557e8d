"""Quality at a fixed budget: each method with ReCo off and on, several seeds.

    python benchmarks/quality.py --root ../shared/data/cifar10            # about 45 minutes on 2 CPUs

Runs Hydra multiruns of the package's own CLI over method x ReCo x seed on an image
folder (by default the CIFAR-10 subset: 25,000 training and 10,000 test images) and
prints a Markdown table of the final kNN accuracy on the test images, per run and as the
mean over seeds. Every run has the same epochs, backbone and batch, so the comparison is
at equal training length, as in the ReCo paper (ReCo's steps cost more compute).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from collections import defaultdict
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--root", required=True, help="image folder with train/ and test/ (or val/)")
    parser.add_argument("--methods", default="moco,simclr,byol")
    parser.add_argument("--seeds", default="0,1")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--width", type=int, default=16, help="ResNet-18 width (64 = torchvision)")
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--out", default="benchmark_runs/quality", help="sweep directory")
    parser.add_argument(
        "--parallel", action="store_true",
        help="one multirun per seed, all at once, each process on one thread (2 seeds on 2 cores)",
    )
    parser.add_argument("--collect-only", action="store_true", help="only tabulate an existing sweep")
    args = parser.parse_args()
    out = Path(args.out).resolve()

    if not args.collect_only:
        def sweep(seeds: str, sweep_dir: Path) -> list[str]:
            return [
                sys.executable, "-m", "reco_lightning", "-m",
                f"+method={args.methods}", "+reco=off,on", f"seed={seeds}",
                "dataset=imagefolder", f"dataset.root={Path(args.root).resolve()}",
                f"dataset.batch_size={args.batch_size}", "dataset.num_workers=0", "dataset.pin_memory=false",
                f"backbone.width={args.width}",
                f"trainer.max_epochs={args.epochs}", f"trainer.check_val_every_n_epoch={args.epochs}",
                "trainer.enable_progress_bar=false", f"hydra.sweep.dir={sweep_dir}",
            ]

        started = time.time()
        if args.parallel:
            env = {**os.environ, "OMP_NUM_THREADS": "1"}
            jobs = []
            for seed in args.seeds.split(","):
                command = sweep(seed, out / f"seed{seed}")
                print("running:", " ".join(command), flush=True)
                log = open(out.parent / f"{out.name}-seed{seed}.log", "w")
                jobs.append(subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT))
            if any(job.wait() for job in jobs):
                raise SystemExit("a sweep failed: see its log beside the sweep directory")
        else:
            command = sweep(args.seeds, out / "all")
            print("running:", " ".join(command), flush=True)
            subprocess.run(command, check=True)
        print(f"sweeps finished in {(time.time() - started) / 60:.1f} min", flush=True)

    results: dict[tuple[str, bool], list[float]] = defaultdict(list)
    rows = []
    for summary_file in sorted(out.glob("*/*/summary.json")):
        summary = json.loads(summary_file.read_text())
        config = (summary_file.parent / "config.yaml").read_text()
        seed = next(line.split(":")[1].strip() for line in config.splitlines() if line.startswith("seed:"))
        results[(summary["method"], summary["reco"])].append(summary["knn_acc"])
        rows.append((summary["method"], summary["reco"], seed, summary["knn_acc"], summary["train_time_s"]))

    print(f"\n# kNN accuracy (k=200) on the test images after {args.epochs} epochs, "
          f"ResNet-18 width {args.width}, batch {args.batch_size}\n")
    print("| method | ReCo | seed | kNN top-1 | training time (s) |")
    print("| --- | --- | --- | ---: | ---: |")
    for method, reco, seed, knn, seconds in rows:
        print(f"| {method} | {'on' if reco else 'off'} | {seed} | {100 * knn:.2f} | {seconds:.0f} |")
    print("\n| method | ReCo off (mean) | ReCo on (mean) | difference |")
    print("| --- | ---: | ---: | ---: |")
    for method in args.methods.split(","):
        off, on = results.get((method, False)), results.get((method, True))
        if off and on:
            mean_off, mean_on = statistics.mean(off), statistics.mean(on)
            print(f"| {method} | {100 * mean_off:.2f} | {100 * mean_on:.2f} | {100 * (mean_on - mean_off):+.2f} |")


if __name__ == "__main__":
    main()
