"""Experiments: one object (`Experiment`) that resolves a config once and offers prepare, run, evaluate
and sweep; the tiny world (`world`), one unlearning run from config to results (`run`), the schedule a
run would train (`schedule`) and the sweep engine (`sweep`)."""

from utils.experiment.experiment import Experiment

__all__ = ["Experiment"]
