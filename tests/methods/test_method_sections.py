"""The `method` section: the new shape (a schedule, named loss terms, weights), the old spellings read into
it with one line saying how to write them now, a saved config reloading to the same settings, and the
settings tables of docs/methods.md made from the fields' metadata."""

import re

import pytest

from methods.losses.kl import KL
from methods.losses.nll import NLL
from methods.losses.npo import NPO
from methods.losses.simnpo import SimNPO
from methods.losses.undial import UNDIAL
from methods.registry import settings_tables, typed
from utils.config import MethodSection, load_config, save_config
from utils.errors import UserError

from ..conftest import REPO

# Each shipped config that moved onto a schedule, as it was written before the loss terms.
OLD_SHAPES = {
    "npo": "method:\n  name: npo\n  npo_beta: 0.1\n  retain_loss: nll\n",
    "simnpo": "method:\n  name: simnpo\n  simnpo_beta: 4.5\n  simnpo_gamma: 0.0\n  retain_loss: nll\n",
    "wga": "method:\n  name: wga\n  wga_beta: 1.0\n  retain_loss: nll\n",
    "undial": "method:\n  name: undial\n  undial_beta: 10.0\n  retain_loss: none\n",
    "kl": "method:\n  name: kl\n  forget_loss: ascent\n  retain_loss: kl\n",
    "sugd_simnpo": ("method:\n  name: sugd\n  chunk_size: 32\n  positive_ratio: 7\n  positive_factor: 0.5\n"
                    "  forget_loss: simnpo\n  simnpo_beta: 4.5\n  simnpo_gamma: 0.0\n  retain_loss: nll\n"),
}


def method_of(path, overrides=()):
    return typed(load_config(path, list(overrides))).method


@pytest.mark.parametrize("name", sorted(OLD_SHAPES))
def test_an_old_shape_loads_as_the_new_one_with_one_hint_line(name, tmp_path, capsys):
    old = tmp_path / f"{name}.yaml"
    old.write_text(OLD_SHAPES[name])
    capsys.readouterr()
    shipped = method_of(REPO / "configs" / f"{name}.yaml")
    assert capsys.readouterr().err == ""  # the shipped config is written in the new shape
    assert method_of(old) == shipped
    hint = capsys.readouterr().err.splitlines()
    assert len(hint) == 1 and "is the old spelling; write method: {name: " in hint[0], hint


def test_the_old_spellings_map_onto_the_schedules(tmp_path, capsys):
    expected = {"npo": ("gd", NPO(beta=0.1), NLL()), "simnpo": ("gd", SimNPO(), NLL()),
                "undial": ("ga", UNDIAL(), None), "kl": ("gd", None, KL())}
    for name, (schedule, forget, retain) in expected.items():
        path = tmp_path / f"{name}.yaml"
        path.write_text(OLD_SHAPES[name])
        method = method_of(path)
        assert method.name == schedule
        assert forget is None or method.forget == forget
        assert getattr(method, "retain", None) == retain
    # --set with the old spelling on an old file works the same way; a knob of another term is dropped.
    path = tmp_path / "npo.yaml"
    assert method_of(path, ["method.npo_beta=0.2", "method.wga_beta=-3"]).forget == NPO(beta=0.2)
    # npo without a retain term is NPO on the forget set alone: ga.
    assert method_of(path, ["method.retain_loss=none"]).name == "ga"
    assert "write method: {name: ga, forget: {loss: npo, beta: 0.1}}" in capsys.readouterr().err


def test_a_saved_config_writes_the_new_shape_and_reloads_to_an_equal_object(tmp_path, capsys):
    for name in ("npo", "sugd_simnpo", "undial", "sugd_doc_ceiling", "rmu", "idk_dpo", "gold_standard"):
        config = typed(load_config(REPO / "configs" / f"{name}.yaml"))
        save_config(config, tmp_path / "saved.yaml")
        text = (tmp_path / "saved.yaml").read_text()
        if name not in ("rmu", "idk_dpo", "gold_standard"):  # the schedules over loss terms
            assert "forget:" in text and not re.search(r"forget_loss:|retain_loss:|\w+_beta:|simnpo_gamma", text)
        assert typed(load_config(tmp_path / "saved.yaml")) == config, name
    assert capsys.readouterr().err == ""
    section = MethodSection(name="gd", options={"forget": {"loss": "simnpo", "gamma": 0.5}, "retain": "kl"})
    assert typed(load_config(None)).method != section  # typed settings, not the raw section
    with pytest.raises(UserError, match=r"^config: method\.forget: unknown forget loss 'nope' \(known: ascent, npo, "
                                        r"simnpo, wga, undial\)$"):
        typed(load_config(None, ["method.forget=nope"]))
    with pytest.raises(UserError, match=r"^config: method\.retain: unknown retain loss 'npo' \(known: nll, kl, none\)$"):
        typed(load_config(None, ["method.retain=npo"]))


def test_the_docs_settings_tables_are_the_generated_ones():
    text = (REPO / "docs" / "methods.md").read_text()
    listed = text.split("<!-- knobs:start -->\n", 1)[1].split("<!-- knobs:end -->", 1)[0]
    assert listed == settings_tables()
    # Every knob of every term and method is in it, with its range where it has one.
    assert "| `forget: npo` | `beta` | `0.1` | a finite number > 0 | NPO's inverse temperature |" in listed
    assert "| `sugd` | `positive_ratio` | `7` | 0 or more |" in listed
