"""`base:` composition: a config states only what differs from the one it starts from."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from utils.config import load_config, to_dict
from utils.errors import UserError

REPO = Path(__file__).resolve().parents[2]


def write(path: Path, data: dict) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(data))
    return path


def test_a_config_merges_over_its_base_chain(tmp_path):
    write(tmp_path / "root.yaml", {"workdir": "w0", "training": {"epochs": 2, "learning_rate": 1e-4},
                                   "adapter": {"target_modules": ["q_proj", "v_proj"]}})
    write(tmp_path / "mid" / "middle.yaml", {"base": "../root.yaml", "training": {"epochs": 5}})
    leaf = write(tmp_path / "mid" / "leaf.yaml", {"base": "middle.yaml", "adapter": {"target_modules": ["k_proj"]}})
    config = load_config(leaf, ["training.batch_size=3"])
    assert config.workdir == str(REPO / "w0")  # a relative path names a place in the checkout
    assert (config.training.epochs, config.training.learning_rate, config.training.batch_size) == (5, 1e-4, 3)
    assert config.adapter.target_modules == ["k_proj"]  # a list replaces the base's, it is not appended to


@pytest.mark.parametrize("base, message", [
    ("loop.yaml", "its 'base' chain comes back to itself"),
    ("absent.yaml", "config file not found"),
    (3, "'base' must name another config file"),
])
def test_a_bad_base_is_one_line(tmp_path, base, message):
    path = write(tmp_path / "loop.yaml", {"base": base, "training": {"epochs": 1}})
    with pytest.raises(UserError, match=message) as caught:
        load_config(path)
    assert "\n" not in str(caught.value)


def test_the_shipped_olmo_configs_state_only_what_differs():
    for folder in ("olmo-1b", "olmo-7b"):
        for path in sorted((REPO / "configs" / folder).glob("*.yaml")):
            data = yaml.safe_load(path.read_text())
            if path.name == "base.yaml":
                assert "base" not in data
                continue
            assert "base" in data, path
            assert "data" not in data and "evaluation" not in data, path  # from base.yaml only
    sugd = to_dict(load_config(REPO / "configs" / "olmo-7b" / "sugd.yaml"))
    assert sugd["model"]["name_or_path"].endswith("olmo-finetuned-semeval25-unlearning")
    assert sugd["training"]["batch_size"] == 8 and sugd["adapter"] == {**sugd["adapter"], "kind": "last_k", "last_k": 8}
    assert sugd["evaluation"]["mmlu_shots"] == 5 and sugd["training"]["mixed_precision"] == "bf16"
    gold = load_config(REPO / "configs" / "olmo-1b" / "gold_standard.yaml")
    assert gold.model.name_or_path == "allenai/OLMo-1B-0724-hf" and gold.model.tokenizer is None


def test_the_saved_config_is_resolved_without_base(tmp_path):
    from utils.config import save_config

    save_config(load_config(REPO / "configs" / "sugd_ceiling.yaml"), tmp_path / "config.yaml")
    saved = yaml.safe_load((tmp_path / "config.yaml").read_text())
    assert "base" not in saved and saved["method"]["forget_loss_ceiling"] == "gold_standard"
    assert saved["method"]["chunk_size"] == 32  # from sugd.yaml
