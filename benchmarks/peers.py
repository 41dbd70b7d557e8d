"""Training-step speed of our MoCo v2, SimCLR and BYOL against the same step written with lightly.

    python benchmarks/peers.py                                   # CPU, full-size ResNet-18
    python benchmarks/peers.py --device cuda --methods moco      # a GPU
    python benchmarks/peers.py --width 8 --batch-size 16 --rounds 2 --check   # smoke test

lightly (1.6) is a peer, never a dependency of this package: run this with a Python that
has both, e.g. ``python -m venv .venv-peers && .venv-peers/bin/pip install . "lightly==1.6.*"``.

Our step is what Lightning runs for the plain method (ReCo off): ``training_step``,
backward, optimizer step, ``on_train_batch_end``. lightly's step is the same method
written the way lightly's own examples write it, from lightly's parts (heads, losses,
``update_momentum``, ``deactivate_requires_grad``, ``cosine_schedule``). A slower step of
ours is then our overhead (Lightning hooks, logging, checks, the base class), not a
different model, because everything that sets the amount of work is kept equal:

* **backbone**: ResNet-18 from our ``build_backbone`` (``--width``, the 3x3 stride-1 stem
  for images of 64 px or less); lightly's model gets a fresh one of the same architecture,
  built from the same seed, so both start from identical weights.
* **heads**: the same layers and sizes as our ``mlp_head``, built with lightly's
  ``ProjectionHead`` from explicit blocks or its BYOL heads where those are identical:
  Linear (no bias)-BN-ReLU, then Linear; MoCo's projector ends in Linear (no bias) and
  BatchNorm1d without affine parameters (our MoCo preset). Sizes are our defaults and
  ``conf/method/*.yaml``: MoCo and SimCLR 2048/128 at temperature 0.2, BYOL 4096/256
  with a 4096 predictor, EMA momentum 0.99.
* **loss**: MoCo v2 one direction (our default ``symmetric=false``) against a queue of
  ``--queue-size`` keys (lightly: ``NTXentLoss`` with a memory bank), EMA of key encoder
  and projector; SimCLR NT-Xent over the batch; BYOL symmetric ``2 - 2 cos`` with EMA
  target and predictor (lightly's ``NegativeCosineSimilarity`` mapped to ``2 + 2 * loss``
  so values and gradients match ours).
* **online probe**: our ``training_step`` also trains a linear probe (feature_dim x 10)
  on detached backbone features with cross entropy; the lightly step here gets the same
  probe, so both do that work.
* **optimizer**: ``SGD(lr=0.03, momentum=0.9, weight_decay=1e-4)`` over each model's
  parameters on both sides (not our ``configure_optimizers``).
* **inputs**: one batch of two random views (fixed seed), the same tensors for both.

Timing: warm-up steps for each, then ``--rounds`` rounds of one step of each, the order
swapped every round so neither side always runs second; each step is timed alone with
``time.perf_counter`` (with ``torch.cuda.synchronize`` around it on a GPU). The table
gives images/s from the median step time of each side, the ratio of the medians ours /
lightly (<= 1.0: ours is at least as fast) and the range of the per-round ratios.
``--check`` also compares the two sides and exits with status 1 if any comparison fails:
the initial backbone weights must be identical (both use our zero-initialised residual
blocks), the step-0 losses equal up to float rounding (``CHECK_RTOL``), MoCo's step-0 keys
equal in our queue and lightly's bank, and lightly's bank must have taken every key.
"""

from __future__ import annotations

import argparse
import copy
import statistics
import sys
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from reco_lightning import BYOL, MoCo, SimCLR
from reco_lightning.models import build_backbone

try:  # checked in main(), so that --help works without lightly
    import lightly
    from lightly.loss import NegativeCosineSimilarity, NTXentLoss
    from lightly.models.modules.heads import BYOLPredictionHead, BYOLProjectionHead, ProjectionHead
    from lightly.models.utils import deactivate_requires_grad, update_momentum
    from lightly.utils.scheduler import cosine_schedule
except ImportError as error:
    LIGHTLY_IMPORT_ERROR: ImportError | None = error
else:
    LIGHTLY_IMPORT_ERROR = None

NUM_CLASSES = 10
SGD = dict(lr=0.03, momentum=0.9, weight_decay=1e-4)
#: --check: largest relative difference of the step-0 losses, and absolute of keys, that passes
CHECK_RTOL = 1e-4
CHECK_ATOL_KEYS = 1e-5

#: each method's settings, passed to our class and read by the lightly model alike
SETTINGS: dict[str, dict[str, Any]] = {
    "moco": dict(temperature=0.2, momentum=0.99, proj_hidden_dim=2048, proj_output_dim=128),
    "simclr": dict(temperature=0.2, proj_hidden_dim=2048, proj_output_dim=128),
    "byol": dict(momentum=0.99, proj_hidden_dim=4096, proj_output_dim=256, pred_hidden_dim=4096),
}

#: what still differs between the two steps after the matching above (printed with the table)
DIFFERENCES = [
    "ours: training_step also logs through self.log (a no-op warning without a Trainer here), "
    "computes the probe's accuracy and checks the loss is finite (bool() of a tensor: one "
    "host sync per step on a GPU); lightly's step does none of these",
    "ours: the EMA update also copies BatchNorm buffers into the target; lightly's "
    "update_momentum updates parameters only (moco, byol)",
    "lightly: the momentum update runs at the start of the next step (as in lightly's "
    "examples), ours after the optimizer step: the same work in the same sequence",
    "moco: lightly's NTXentLoss normalises the embeddings itself and clones the whole memory "
    "bank every step; ours normalises in the method and clones its queue every step too "
    "(it enqueues in the same call)",
    "byol: lightly's momentum follows its cosine_schedule to 1 over this run's steps, ours "
    "stays at 0.99 without a Trainer (same work, other values)",
    "ours: ReLU(inplace=True) in the heads, lightly's heads use ReLU() (memory, not FLOPs)",
]


# -- the lightly side: lightly's parts, put together as in lightly's examples -------------
class LightlyModel(nn.Module):
    """Backbone and online probe shared by the lightly models.

    The probe is built right after the backbone, as our ``SSLMethod`` builds its
    classifier before the method's heads, so that with the same seed every layer of both
    sides draws the same initial weights.
    """

    def __init__(self, backbone: nn.Module, feature_dim: int) -> None:
        super().__init__()
        self.backbone = backbone
        self.probe = nn.Linear(feature_dim, NUM_CLASSES)
        self.steps_done = 0

    def features(self, images: Tensor) -> Tensor:
        return self.backbone(images).flatten(start_dim=1)

    def probe_loss(self, features: Tensor, labels: Tensor) -> Tensor:
        """Cross entropy of the linear probe on detached features (what ours trains too)."""
        return F.cross_entropy(self.probe(features.detach()), labels)

    def method_loss(self, view1: Tensor, view2: Tensor) -> tuple[Tensor, Tensor]:
        """``(loss, backbone features of view1)``; the method's own part."""
        raise NotImplementedError

    def training_loss(self, batch: dict[str, Any]) -> Tensor:
        view1, view2 = batch["strong"]
        loss, features = self.method_loss(view1, view2)
        self.steps_done += 1
        return loss + self.probe_loss(features, batch["label"])


class LightlyMoCo(LightlyModel):
    """MoCo v2 as in lightly's example: momentum key encoder, NTXentLoss with a memory bank."""

    def __init__(
        self, backbone: nn.Module, feature_dim: int, queue_size: int, settings: dict[str, Any]
    ) -> None:
        super().__init__(backbone, feature_dim)
        hidden, out = settings["proj_hidden_dim"], settings["proj_output_dim"]
        self.projection_head = ProjectionHead(
            [
                (feature_dim, hidden, nn.BatchNorm1d(hidden), nn.ReLU()),
                (hidden, out, nn.BatchNorm1d(out, affine=False), None),  # no bias: a BN follows
            ]
        )
        self.backbone_momentum = copy.deepcopy(self.backbone)
        self.projection_head_momentum = copy.deepcopy(self.projection_head)
        deactivate_requires_grad(self.backbone_momentum)
        deactivate_requires_grad(self.projection_head_momentum)
        self.momentum = settings["momentum"]
        self.criterion = NTXentLoss(
            temperature=settings["temperature"], memory_bank_size=(queue_size, out)
        )

    def method_loss(self, view1: Tensor, view2: Tensor) -> tuple[Tensor, Tensor]:
        update_momentum(self.backbone, self.backbone_momentum, m=self.momentum)
        update_momentum(self.projection_head, self.projection_head_momentum, m=self.momentum)
        features = self.features(view1)
        query = self.projection_head(features)
        key = self.projection_head_momentum(
            self.backbone_momentum(view2).flatten(start_dim=1)
        ).detach()
        return self.criterion(query, key), features


class LightlySimCLR(LightlyModel):
    """SimCLR as in lightly's example: one projection head, NTXentLoss without a bank."""

    def __init__(self, backbone: nn.Module, feature_dim: int, settings: dict[str, Any]) -> None:
        super().__init__(backbone, feature_dim)
        hidden, out = settings["proj_hidden_dim"], settings["proj_output_dim"]
        # SimCLRProjectionHead(batch_norm=True) would add a BatchNorm after the output layer,
        # which our SimCLR projector does not have: explicit blocks match it exactly.
        self.projection_head = ProjectionHead(
            [
                (feature_dim, hidden, nn.BatchNorm1d(hidden), nn.ReLU()),
                (hidden, out, None, None),
            ]
        )
        self.criterion = NTXentLoss(temperature=settings["temperature"])

    def method_loss(self, view1: Tensor, view2: Tensor) -> tuple[Tensor, Tensor]:
        features = self.features(view1)
        z0 = self.projection_head(features)
        z1 = self.projection_head(self.features(view2))
        return self.criterion(z0, z1), features


class LightlyBYOL(LightlyModel):
    """BYOL as in lightly's example: BYOL heads, EMA target on a cosine schedule."""

    def __init__(
        self, backbone: nn.Module, feature_dim: int, total_steps: int, settings: dict[str, Any]
    ) -> None:
        super().__init__(backbone, feature_dim)
        out = settings["proj_output_dim"]
        # lightly's BYOL heads are Linear (no bias)-BN-ReLU-Linear: our mlp_head exactly.
        self.projection_head = BYOLProjectionHead(feature_dim, settings["proj_hidden_dim"], out)
        self.prediction_head = BYOLPredictionHead(out, settings["pred_hidden_dim"], out)
        self.backbone_momentum = copy.deepcopy(self.backbone)
        self.projection_head_momentum = copy.deepcopy(self.projection_head)
        deactivate_requires_grad(self.backbone_momentum)
        deactivate_requires_grad(self.projection_head_momentum)
        self.base_momentum = settings["momentum"]
        self.total_steps = total_steps
        self.criterion = NegativeCosineSimilarity()

    def online(self, features: Tensor) -> Tensor:
        return self.prediction_head(self.projection_head(features))

    def target(self, images: Tensor) -> Tensor:
        return self.projection_head_momentum(
            self.backbone_momentum(images).flatten(start_dim=1)
        ).detach()

    def method_loss(self, view1: Tensor, view2: Tensor) -> tuple[Tensor, Tensor]:
        momentum = cosine_schedule(self.steps_done, self.total_steps, self.base_momentum, 1.0)
        update_momentum(self.backbone, self.backbone_momentum, m=momentum)
        update_momentum(self.projection_head, self.projection_head_momentum, m=momentum)
        features = self.features(view1)
        p0 = self.online(features)
        p1 = self.online(self.features(view2))
        z0, z1 = self.target(view1), self.target(view2)
        negative_cosine = 0.5 * (self.criterion(p0, z1) + self.criterion(p1, z0))
        return 2.0 + 2.0 * negative_cosine, features  # = mean of 2 - 2 cos, our BYOL loss


# -- building both sides ------------------------------------------------------------------
def build_ours(name: str, args: argparse.Namespace) -> nn.Module:
    extra: dict[str, Any] = {}
    if name == "moco":
        extra = dict(
            queue_size=args.queue_size,
            symmetric=False,
            proj_output_bn=True,
            momentum_schedule="constant",
        )
    torch.manual_seed(args.seed)
    cls = {"moco": MoCo, "simclr": SimCLR, "byol": BYOL}[name]
    model = cls(
        num_classes=NUM_CLASSES,
        backbone_width=args.width,
        small_stem=args.image_size <= 64,
        **SETTINGS[name],
        **extra,
    )
    return model.to(args.device).train()


def build_lightly(name: str, args: argparse.Namespace) -> LightlyModel:
    """The lightly model, seeded like ours so that its weights (and MoCo's bank) start equal."""
    torch.manual_seed(args.seed)
    # the same initialisation as ours (SSLMethod's default zero_init_residual=True), so both
    # sides start from identical weights
    backbone, feature_dim = build_backbone(
        "resnet18", args.width, small_stem=args.image_size <= 64, zero_init_residual=True
    )
    settings = SETTINGS[name]
    if name == "moco":
        model: LightlyModel = LightlyMoCo(backbone, feature_dim, args.queue_size, settings)
    elif name == "simclr":
        model = LightlySimCLR(backbone, feature_dim, settings)
    else:
        model = LightlyBYOL(backbone, feature_dim, args.warmup + args.rounds, settings)
    return model.to(args.device).train()


def make_batch(args: argparse.Namespace) -> dict[str, Any]:
    generator = torch.Generator().manual_seed(args.seed)
    size = (args.batch_size, 3, args.image_size, args.image_size)
    views = [torch.randn(size, generator=generator) for _ in range(2)]
    labels = torch.randint(0, NUM_CLASSES, (args.batch_size,), generator=generator)
    return {"strong": [v.to(args.device) for v in views], "label": labels.to(args.device)}


# -- the two steps and their timing -------------------------------------------------------
def ours_step(model: nn.Module, optimizer: torch.optim.Optimizer, batch: dict[str, Any]) -> Tensor:
    """What Lightning runs for one batch with automatic optimization (no Trainer here)."""
    optimizer.zero_grad(set_to_none=True)
    loss = model.training_step(batch, 0)
    loss.backward()
    optimizer.step()
    model.on_train_batch_end(None, batch, 0)
    return loss.detach()


def lightly_step(
    model: LightlyModel, optimizer: torch.optim.Optimizer, batch: dict[str, Any]
) -> Tensor:
    """A plain PyTorch step of the lightly model (lightly's examples use the same four calls)."""
    optimizer.zero_grad(set_to_none=True)
    loss = model.training_loss(batch)
    loss.backward()
    optimizer.step()
    return loss.detach()


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def timed(step: Callable[[], Tensor], device: str) -> float:
    """Seconds of one step, with the device's queued work drained before and after."""
    sync(device)
    started = time.perf_counter()
    step()
    sync(device)
    return time.perf_counter() - started


@dataclass
class Result:
    ours: list[float] = field(default_factory=list)
    theirs: list[float] = field(default_factory=list)
    checks: list[str] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)

    def check(self, passed: bool, line: str) -> None:
        """Record a comparison; a failed one makes ``--check`` exit with status 1."""
        self.checks.append(f"{'ok' if passed else 'FAILED'}: {line}")
        if not passed:
            self.failures.append(line)

    def row(self, name: str, batch_size: int) -> str:
        ours, theirs = statistics.median(self.ours), statistics.median(self.theirs)
        per_round = [o / t for o, t in zip(self.ours, self.theirs)]
        return (
            f"| {name} | {batch_size / ours:,.0f} | {batch_size / theirs:,.0f} | "
            f"{ours / theirs:.2f} | {min(per_round):.2f}-{max(per_round):.2f} |"
        )


def max_difference(a: nn.Module, b: nn.Module) -> float:
    """Largest absolute difference between two modules' matching state-dict entries."""
    sa, sb = a.state_dict(), b.state_dict()
    return max(
        float((sa[k].float() - sb[k].float()).abs().max()) for k in sa if k in sb and sa[k].numel()
    )


def measure(name: str, args: argparse.Namespace, batch: dict[str, Any]) -> Result:
    ours, theirs = build_ours(name, args), build_lightly(name, args)
    ours_opt = torch.optim.SGD(ours.parameters(), **SGD)
    theirs_opt = torch.optim.SGD(theirs.parameters(), **SGD)
    run_ours = partial(ours_step, ours, ours_opt, batch)
    run_theirs = partial(lightly_step, theirs, theirs_opt, batch)
    result = Result()
    bank_at_start = (
        theirs.criterion.memory_bank.bank.clone() if args.check and name == "moco" else None
    )
    if args.check:
        weights = max_difference(ours.backbone, theirs.backbone)
        result.check(
            weights == 0.0,
            f"{name}: initial backbone weights, max |ours - lightly| = {weights:.1e} (must be 0)",
        )
    first = (run_ours(), run_theirs())  # step 0, the first warm-up step
    if args.check:
        loss_ours, loss_theirs = (float(loss) for loss in first)
        relative = abs(loss_ours - loss_theirs) / max(abs(loss_theirs), 1e-12)
        result.check(
            relative <= CHECK_RTOL,
            f"{name}: step-0 loss (method + probe) ours {loss_ours:.5f}, "
            f"lightly {loss_theirs:.5f} (relative difference {relative:.1e}, "
            f"at most {CHECK_RTOL:.0e})",
        )
        if name == "moco":
            written = slice(0, args.batch_size)
            diff = float(
                (ours.queue.features[written] - theirs.criterion.memory_bank.bank[written])
                .abs()
                .max()
            )
            result.check(
                diff <= CHECK_ATOL_KEYS,
                f"moco: step-0 keys written, max |our queue - lightly bank| = "
                f"{diff:.1e} (at most {CHECK_ATOL_KEYS:.0e})",
            )
    for _ in range(args.warmup - 1):
        run_ours()
        run_theirs()
    if args.profile:
        result.checks += profile_difference(name, run_ours, run_theirs, args.profile)
    for round_index in range(args.rounds):
        if round_index % 2 == 0:
            result.ours.append(timed(run_ours, args.device))
            result.theirs.append(timed(run_theirs, args.device))
        else:
            result.theirs.append(timed(run_theirs, args.device))
            result.ours.append(timed(run_ours, args.device))
    if bank_at_start is not None:
        bank = theirs.criterion.memory_bank.bank
        changed = int((bank != bank_at_start).any(dim=1).sum())
        steps = args.warmup + args.rounds
        expected = min(steps * args.batch_size, bank.shape[0])
        result.check(
            changed == expected and int(ours.queue.num_enqueued) == steps * args.batch_size,
            f"moco: lightly memory bank rows written {changed}/{bank.shape[0]} "
            f"(expected {expected}); our queue took {int(ours.queue.num_enqueued)} keys "
            f"(expected {steps * args.batch_size})",
        )
    return result


def self_times(step: Callable[[], Tensor]) -> dict[str, float]:
    """Self CPU time (ms) of each operator in one profiled step."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        step()
    return {event.key: event.self_cpu_time_total / 1e3 for event in prof.key_averages()}


def profile_difference(
    name: str, run_ours: Callable[[], Tensor], run_theirs: Callable[[], Tensor], top: int
) -> list[str]:
    """Where the two steps spend different time: the operators with the largest difference
    in self CPU time, ours minus lightly's, in one profiled step each."""
    ours, theirs = self_times(run_ours), self_times(run_theirs)
    lines = [
        f"{name}: profiled step, total self CPU ours {sum(ours.values()):,.0f} ms, "
        f"lightly {sum(theirs.values()):,.0f} ms; largest differences (ours - lightly):"
    ]
    keys = sorted(
        set(ours) | set(theirs), key=lambda k: -abs(ours.get(k, 0.0) - theirs.get(k, 0.0))
    )
    for key in keys[:top]:
        lines.append(
            f"  {key}: {ours.get(key, 0.0):,.1f} vs {theirs.get(key, 0.0):,.1f} ms "
            f"({ours.get(key, 0.0) - theirs.get(key, 0.0):+,.1f})"
        )
    return lines


# -- command line -------------------------------------------------------------------------
def missing_lightly_message() -> str:
    return (
        f"lightly cannot be imported by this Python ({sys.executable}): {LIGHTLY_IMPORT_ERROR}.\n"
        "It is a peer for this benchmark only, never a dependency of the package. Make an "
        "environment with both and run with its Python:\n"
        '    python -m venv .venv-peers && .venv-peers/bin/pip install . "lightly==1.6.*"\n'
        "    .venv-peers/bin/python benchmarks/peers.py"
    )


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--methods", nargs="+", default=list(SETTINGS), choices=list(SETTINGS))
    parser.add_argument("--device", default="cpu")
    parser.add_argument(
        "--width", type=int, default=64, help="backbone width (64 = torchvision's ResNet-18)"
    )
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--image-size", type=int, default=32)
    parser.add_argument(
        "--rounds", type=int, default=5, help="timed rounds, one step of each side per round"
    )
    parser.add_argument(
        "--warmup", type=int, default=2, help="untimed steps of each side first (at least 1)"
    )
    parser.add_argument(
        "--queue-size", type=int, default=4096, help="MoCo's queue / lightly's memory bank"
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--check",
        action="store_true",
        help="also print step-0 losses, initial-weight and memory-bank checks",
    )
    parser.add_argument(
        "--profile",
        type=int,
        default=0,
        metavar="N",
        help="also profile one step of each side and print the N operators whose "
        "self CPU time differs most between them",
    )
    args = parser.parse_args()
    if args.warmup < 1 or args.rounds < 1:
        parser.error("--warmup and --rounds must be at least 1")
    return args


def main() -> None:
    args = parse_args()
    if LIGHTLY_IMPORT_ERROR is not None:
        sys.exit(missing_lightly_message())
    warnings.filterwarnings("ignore")  # self.log() without a Trainer
    if not lightly.__version__.startswith("1.6"):
        print(
            f"note: lightly {lightly.__version__} found; "
            "these peers were written against lightly 1.6"
        )
    batch = make_batch(args)
    feature_dim = build_backbone("resnet18", args.width)[1]
    print(
        f"# ours vs lightly: ResNet-18 width {args.width}, batch {args.batch_size}, "
        f"{args.image_size} px, {args.device}, {torch.get_num_threads()} torch threads, "
        f"torch {torch.__version__}, lightly {lightly.__version__}; "
        f"{args.warmup} warm-up steps, {args.rounds} rounds, MoCo queue {args.queue_size}"
    )
    print("\n| method | ours (img/s) | lightly (img/s) | ours / lightly time | per-round range |")
    print("| --- | ---: | ---: | ---: | ---: |")
    checks: list[str] = []
    failures: list[str] = []
    for name in args.methods:
        result = measure(name, args, batch)
        print(result.row(name, args.batch_size), flush=True)
        checks += result.checks
        failures += result.failures
    print(
        f"\nBoth sides train a {feature_dim}x{NUM_CLASSES} linear probe on detached backbone "
        "features (ours in training_step, lightly's as added here). Remaining differences:"
    )
    for line in DIFFERENCES:
        print(f"- {line}")
    if checks:
        print("\nChecks:")
        for line in checks:
            print(f"- {line}")
    if failures:
        sys.exit(
            f"--check: {len(failures)} comparison(s) failed: "
            "the two sides do not compute the same step"
        )


if __name__ == "__main__":
    main()
