"""What drives a run: the training, evaluation and sweep-report commands and their plumbing
(run directories, checkpoint files, callbacks, metric logs, trackers, config checks).

Nothing is imported here, so that ``python -m reco_lightning --help`` stays free of Lightning;
import the module you need, e.g. ``from reco_lightning.run.train import train``.
"""
