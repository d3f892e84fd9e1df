"""Experiments: one object (`Experiment`) that resolves a config once and offers prepare, run, evaluate
and sweep; a config's places and inputs (`resolved`), the run's examples and phases (`inputs`), one unlearning
run from config to results as named steps (`run`), the schedule a run would train (`schedule`), the sweep engine
(`sweep`), the tiny world (`world`) and the library's child-process entry point (`child`). The modules import one
way (lume_unlearning/__init__.py's docstring gives the order); `Experiment` is on top."""

from utils.experiment.experiment import Experiment

__all__ = ["Experiment"]
