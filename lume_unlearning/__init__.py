"""The `unlearn` entry point's own package: a name no other project uses.

The library lives in the packages `utils` and `methods` (their names are the users'); such generic
names can be shadowed by another `utils` on the path, so the entry point checks which ones it got
before importing anything from them.

The project's layers, lowest first. A module imports only from its own layer and the ones above it in
this list, and no import circle runs among the project's modules (function-level imports count too);
`tests/experiment/test_experiment.py` reads the list from here and checks both.

    infrastructure:   utils.errors utils.io utils.folders utils.environment utils.seeding utils.memory
                      utils.project utils.entry
    config:           utils.config
    data and models:  utils.data utils.models
    evaluation:       utils.evaluation
    engine:           methods.engine
    methods:          methods
    experiment:       utils.experiment
    interfaces:       utils.cli lume_unlearning

Inside the experiment layer: resolved (a config's places and inputs), inputs (examples, phases) and
fingerprints (the bytes of every input) at the bottom; prompt_attacks and probe, robustness over them, then run
(the run's steps); schedule, doctor and sweep over those; experiment (`Experiment`, the front door), merge,
reproduce, requests and child (the library's entry point for child processes) on top.
"""
