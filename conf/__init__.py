"""Hydra configuration tree of reco_lightning (shipped inside the package). Importing it
registers the config schema (:mod:`reco_lightning.run.schema`) that its presets build on."""

from reco_lightning.run.schema import register

register()
