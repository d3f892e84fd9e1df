"""Every shipped config trains what it trained before the methods became schedules plus loss terms: the same
phases (examples, roles, weights, order, epochs, shuffling, info) and the same loss on a fixed batch to 1e-6.
Phase names are compared where the config keeps its method (configs/npo.yaml's phases were "npo", now "gd")."""

import json
from pathlib import Path

import pytest

from ..methods.loss_snapshot import snapshot

BEFORE = json.loads((Path(__file__).parent / "data" / "before_redesign.json").read_text())


@pytest.fixture(scope="module")
def now():
    return snapshot()


def test_every_shipped_config_keeps_its_schedule_and_its_loss(now):
    assert set(now) == set(BEFORE)
    for config, before in BEFORE.items():
        after = now[config]
        same_method = before["method"] == after["method"]
        assert len(after["schedule"]) == len(before["schedule"]), config
        for old, new in zip(before["schedule"], after["schedule"]):
            keys = [key for key in old if key != "name" or same_method]
            assert {k: new[k] for k in keys} == {k: old[k] for k in keys}, config
        assert after["loss"]["adapter"] == before["loss"]["adapter"]
        assert after["loss"]["tokens"] == before["loss"]["tokens"], config
        assert after["loss"]["per_example"] == pytest.approx(before["loss"]["per_example"], abs=1e-6), config
    # The fixture is not vacuous: ascent, NPO, KL and the ceiling give different numbers on the same batch.
    losses = {tuple(round(x, 4) for x in record["loss"]["per_example"]) for record in BEFORE.values()}
    assert len(losses) >= 15
