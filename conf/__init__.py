"""Hydra configuration tree of reco_lightning (shipped inside the package)."""
