"""Write ``reco_mixin_tutorial.ipynb`` (without outputs) from the cells below.

The notebook's source lives here so that it can be reviewed and diffed as plain Python;
rerun ``python notebooks/make_tutorial.py`` after editing a cell. ``tests/test_notebook.py``
executes the written notebook.
"""

from __future__ import annotations

from pathlib import Path

import nbformat
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

NOTEBOOK = Path(__file__).with_name("reco_mixin_tutorial.ipynb")


def md(text: str) -> nbformat.NotebookNode:
    return new_markdown_cell(text.strip())


def code(text: str, tags: list[str] | None = None) -> nbformat.NotebookNode:
    cell = new_code_cell(text.strip())
    if tags:
        cell.metadata["tags"] = tags
    return cell


CELLS = [
    md(
        r"""
# Adding ReCo to your own method with `ReCoMixin`

Plain contrastive learning treats every other image as an equally wrong negative, so images
of the same class are pushed apart and graded similarity is lost. **ReCo** (Zhang et al.,
arXiv 2211.01796) keeps the base method's loss and adds two *relation* terms:

* a **global distribution relation**: the similarity distribution of a strong view over a
  bank of earlier images is pulled towards the sharper distribution that a *weakly*
  augmented view of the same image has over that bank;
* a **local interpolation relation**: an image mixed in pixel space (CutMix by default) must
  embed where the same mix of the two images' embeddings lies.

`reco_lightning` ships MoCo v2, SimCLR and BYOL, each of which can hold a ReCo. This notebook adds ReCo
to a method the package does **not** ship: **SimSiam** (Chen & He, 2021). SimSiam has an
online encoder, a projector and a predictor; one branch's projection is the other branch's
target under a stop-gradient, the loss is the negative cosine similarity, and there is no
momentum encoder and no negatives.

ReCo is one module, `ReCo`, that owns the relation bank, the queue of negatives and (for a
method without a momentum encoder, like SimSiam) an EMA teacher. A model holds it and gets
`reco_loss` from `ReCoMixin`; all ReCo needs from the model is its *online* embedding of an
image batch (and its *target* embedding, where it has a momentum target network).
"""
    ),
    code(
        r"""
%matplotlib inline
import csv
import math
import tempfile
from pathlib import Path

import lightning as L
import matplotlib.pyplot as plt
import torch
import torch.nn.functional as F
from lightning.pytorch.loggers import CSVLogger

from reco_lightning import ReCo, ReCoConfig, ReCoMixin
from reco_lightning import SSLDataModule
from reco_lightning.models import build_backbone, mlp_head

L.seed_everything(0)
LOG_DIR = Path(tempfile.mkdtemp(prefix="reco_tutorial_"))  # logs never land in the repository
print("logs go to", LOG_DIR)
"""
    ),
    md(
        r"""
## 1. A SimSiam module with ReCo

Three things make a module ReCo-ready, and none of them is a hook:

1. **Subclass `ReCoMixin`** (before or after `LightningModule`: the mixin has no hooks, so
   the order does not matter). It gives the module `reco_loss`.
2. **Provide `online_embedding`**, L2-normalised and with gradient: here the predictor
   output, the quantity SimSiam trains. A module with a momentum (EMA) target network also
   provides `target_embedding`. SimSiam has none, so it leaves `target_embedding` out and
   ReCo keeps an EMA copy of the online network as its teacher (momentum 0.99,
   `reco.teacher=auto`), moved once per optimizer step. Scoring against the online network
   itself (`teacher="online"`) is what cost SimCLR 21 kNN points on CIFAR-10.
3. **Hold a `ReCo` and add `self.reco_loss(batch)` to the loss.** `ReCo.from_settings(reco,
   embedding_dim, self)` (None when the settings turn ReCo off) builds the module that owns
   the relation bank, the queue of negatives and the EMA teacher; build it last in
   `__init__`, when the networks its teacher copies exist. SimSiam has no temperature; ReCo's
   local term uses 0.2, the value the package uses for BYOL, which has none either.

One `reco_loss` call moves the teacher (if an optimizer step has passed), scores the batch
against clones of the queues and enqueues the step's keys, so nothing has to happen in
`on_train_batch_end`.
"""
    ),
    code(
        r"""
class SimSiamReCo(ReCoMixin, L.LightningModule):
    # SimSiam (Chen & He, 2021) with ReCo's relation terms; a narrow ResNet-18 for a quick CPU run.

    def __init__(self, reco=None, width=8, proj_dim=64, pred_hidden_dim=32, lr=0.05):
        super().__init__()
        self.save_hyperparameters()
        self.backbone, feature_dim = build_backbone("resnet18", width, small_stem=True)
        self.projector = mlp_head(feature_dim, proj_dim, proj_dim)
        self.predictor = mlp_head(proj_dim, pred_hidden_dim, proj_dim)  # SimSiam's bottleneck
        self.reco = ReCo.from_settings(reco, proj_dim, self)  # None = off

    # -- the one function ReCo needs (no target network: ReCo keeps an EMA teacher) --------
    def online_embedding(self, images):
        return F.normalize(self.predictor(self.projector(self.backbone(images))), dim=1)

    # -- training ---------------------------------------------------------------------------
    def _branch(self, images):
        # Normalised projection z (the target side) and prediction p (the online side).
        z = self.projector(self.backbone(images))
        return F.normalize(z, dim=1), F.normalize(self.predictor(z), dim=1)

    def training_step(self, batch, batch_idx):
        v1, v2 = batch["strong"]
        z1, p1 = self._branch(v1)
        z2, p2 = self._branch(v2)
        # Symmetric negative cosine similarity, stop-gradient on the projection side.
        loss_method = -0.5 * ((p1 * z2.detach()).sum(1).mean() + (p2 * z1.detach()).sum(1).mean())
        self.log("train/loss_method", loss_method.detach(), on_step=True, on_epoch=True, prog_bar=True)

        loss = loss_method
        if self.reco is not None:
            # p1 is exactly online_embedding(v1): passing it avoids recomputing it.
            loss = loss + self.reco_loss(batch, q1=p1)
        self.log("train/loss", loss.detach(), on_step=True, on_epoch=True)
        return loss

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=self.hparams.lr, momentum=0.9, weight_decay=1e-4)
"""
    ),
    md(
        r"""
**What ReCo costs here.** SimSiam already runs the online network on both strong views;
passing `q1=p1` (the online embedding of `v1`) saves recomputing it. ReCo adds:

* two **teacher** forward passes without gradient, over the weak view (teacher of the
  global term and the keys that go into the relation bank) and over `v2` (the second half
  of the local term's target, and its negatives), and
* one **online** forward and backward pass over the mixed batch (the local term).

A module with its own target network passes `k2=target_embedding(v2)` as well, which saves
the second teacher pass.
"""
    ),
    md(
        r"""
## 2. Train for a few steps

`SSLDataModule(weak_view=True)` adds the weak view that ReCo needs to each training batch:
`{"strong": [v1, v2], "weak": w, "label": y}`. The bundled `digits` data (scikit-learn's
8x8 digits, upsampled to 16 px) needs no download. The relation bank and the negative
queue hold 512 embeddings here (16384 is the default for CIFAR-size data); any size of at
least one global batch works. Thirty steps of a width-8 ResNet-18 take well under a minute
on a CPU; this only shows the mechanics, not a useful representation.
"""
    ),
    code(
        r"""
datamodule = SSLDataModule(name="digits", image_size=16, batch_size=64, weak_view=True)
# ReCo's weights rise from 0 over `warmup_epochs` (2 by default); half an epoch here, so the
# 30 steps below reach full weight
model = SimSiamReCo(reco={"bank_size": 512, "negatives_size": 512, "warmup_epochs": 0.5})

trainer = L.Trainer(
    accelerator="cpu",
    max_steps=30,
    limit_val_batches=0,  # this tutorial trains only; no validation_step is defined
    logger=CSVLogger(LOG_DIR, name="simsiam_reco"),
    enable_checkpointing=False,
    enable_progress_bar=False,
    log_every_n_steps=1,
    default_root_dir=LOG_DIR,
)
trainer.fit(model, datamodule=datamodule)
print("relation bank:", model.reco.bank, "- keys enqueued:", int(model.reco.bank.num_enqueued))
"""
    ),
    md(
        r"""
## 3. Look at the three terms

The method's loss is logged by our `training_step`, the two ReCo terms by `reco_loss`. With
`on_step=True` the CSV logger writes them per step with a `_step` suffix. The queues start
empty, and rows that were never written are left out of both terms, so at step 0 the
terms are skipped (with the warm-up their weight is 0 there anyway; an empty queue is
logged as `train/reco_global_skipped`, not as a zero loss); from step 1 on they are computed. Every logged value must be finite; the next cell checks that, so a
broken ReCo fails this notebook (it is executed by the package's tests).
"""
    ),
    code(
        r"""
TERMS = ["train/loss_method_step", "train/loss_global_step", "train/loss_local_step"]

with open(Path(trainer.logger.log_dir) / "metrics.csv", newline="") as handle:
    rows = [row for row in csv.DictReader(handle) if row.get(TERMS[0])]
curves = {name: ([int(r["step"]) for r in rows if r[name]], [float(r[name]) for r in rows if r[name]])
          for name in TERMS}

assert len(curves[TERMS[0]][0]) == 30, f"expected 30 logged steps, got {len(curves[TERMS[0]][0])}"
assert len(curves[TERMS[1]][0]) == 29, "the global term is skipped at step 0 only (empty bank)"
for name, (steps, values) in curves.items():
    assert all(math.isfinite(v) for v in values), f"{name} is not finite: {values}"
    print(f"{name:26s} first {values[0]:8.4f}   last {values[-1]:8.4f}")
"""
    ),
    code(
        r"""
fig, ax = plt.subplots(figsize=(7, 4))
for name, (steps, values) in curves.items():
    ax.plot(steps, values, label=name.removeprefix("train/").removesuffix("_step"))
ax.set_xlabel("optimizer step")
ax.set_ylabel("loss")
ax.set_title("SimSiam + ReCo on digits (16 px)")
ax.legend()
plt.show()
""",
        tags=["plot"],
    ),
    md(
        r"""
SimSiam's loss is a negative cosine, so it lies in [-1, 1] and falls as the two branches
agree. The global term is a cross-entropy over the 512-entry bank (its scale is set by
`log(512)` and the teacher's sharpness); the local term is an InfoNCE against 512
negatives; both only score rows that hold keys, so their scale grows with the filled part
of the bank during the first steps (512 rows fill in 8 steps of 64).

## 4. Turning ReCo off, and its settings

`ReCo.from_settings(None, ...)` (or settings with `enabled: False`) gives `None`: the module
holds no ReCo and is exactly plain SimSiam. Guard the call to `reco_loss` with
`self.reco is not None`, as `training_step` above does, and build the data module without the
weak view, so no time is spent augmenting it.
"""
    ),
    code(
        r"""
plain = SimSiamReCo(reco=None)
print("ReCo:", plain.reco, "- ReCo state in the checkpoint:", any(k.startswith("reco.") for k in plain.state_dict()))
print(ReCoConfig())  # the defaults
"""
    ),
    md(
        r"""
The settings, passed as a dict (or a `ReCoConfig`) to `ReCo`:

| setting | default | meaning |
| --- | --- | --- |
| `w_global`, `w_local` | `None` | weights of the two terms in `weighted`; `None` takes `ReCo(..., weights=)`, (1.0, 1.0) unless given (a built-in method passes its `reco_weights`) |
| `tau_student`, `tau_teacher` | 0.1, 0.04 | temperatures of the strong (student) and weak (teacher) distributions of the global term |
| `tau_local` | `None` | the local term's temperature; `None` uses the `temperature` given to `ReCo` (0.2) |
| `alpha` | 1.0 | `lam ~ Beta(alpha, alpha)`, the mixing ratio |
| `mix` | `"auto"` | `"cutmix"` or `"mixup"`; `"auto"` takes `ReCo(..., mix=)`, CutMix unless given |
| `bank_size` | 16384 | relation bank: target embeddings of weak views |
| `negatives_size` | 16384 | the local term's negatives, when the method lends no queue of its own |
| `negatives` | `"auto"` | `"queue"` or `"batch"`: the local term's negatives are earlier teacher keys, or this batch's; `"auto"` takes `ReCo(..., negatives=)`, the queue unless given |
| `teacher` | `"auto"` | `"auto"` (`ReCo(..., teacher=)`, else the module's `target_embedding` if it has one, else ReCo's EMA copy), `"ema"`, `"online"` |
| `teacher_momentum` | 0.99 | momentum of ReCo's own EMA teacher |
| `warmup_epochs` | `None` | both weights rise linearly from 0 over this many epochs; `None` takes `ReCo(..., warmup_epochs=)`, 2 unless given (chosen by a pilot on CIFAR-10's test images; docs/benchmarks.md, "How the defaults were chosen") |

Unknown keys are rejected with a message listing the valid ones. The built-in `MoCo`,
`SimCLR` and `BYOL` in `reco_lightning.methods` hold the same `ReCo` module and are worth
reading next: MoCo lends its key queue (`ReCo(..., borrows_negatives=True)`, and the queue's
written rows from before its own keys as `negatives=` in each call).
"""
    ),
]


def build() -> nbformat.NotebookNode:
    notebook = new_notebook(cells=CELLS)
    for index, cell in enumerate(notebook.cells):
        cell.id = f"cell-{index:02d}"  # stable ids keep regenerated notebooks diff-free
    notebook.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    notebook.metadata["language_info"] = {"name": "python"}
    return notebook


def main() -> None:
    notebook = build()
    nbformat.validate(notebook)
    nbformat.write(notebook, NOTEBOOK)
    print(f"wrote {NOTEBOOK}")


if __name__ == "__main__":
    main()
