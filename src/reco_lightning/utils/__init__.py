"""Distributed helpers, momentum encoders, optimizers and schedules."""
