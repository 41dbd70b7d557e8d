"""Hydra configuration tree of reco_lightning (shipped inside the package). Importing it
registers the config schema (:mod:`reco_lightning.schema`) that its presets build on."""

from reco_lightning.schema import register

register()
