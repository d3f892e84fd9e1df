from pathlib import Path

import pytest

from utils.config import Config, load_config
from utils.errors import UserError

CONFIG_ROOT = Path(__file__).resolve().parents[1] / "configs"
CONFIGS = sorted(p for p in CONFIG_ROOT.rglob("*.yaml") if p.parent.name not in ("accelerate", "experiments"))
SWEEPS = sorted((CONFIG_ROOT / "experiments").glob("*.yaml"))


def write(tmp_path, text):
    path = tmp_path / "c.yaml"
    path.write_text(text)
    return path


def test_defaults_are_the_embedded_default():
    config = load_config(None)
    assert isinstance(config, Config)
    assert config.data.path is None and config.model.name_or_path is None


def test_yaml_values_and_scientific_notation(tmp_path):
    config = load_config(write(tmp_path, "training:\n  learning_rate: 1e-5\n  batch_size: 2\nmethod:\n  name: ga\n"))
    assert config.training.learning_rate == 1e-5
    assert config.training.batch_size == 2
    assert config.method.name == "ga"


def test_unknown_key_names_the_path(tmp_path):
    with pytest.raises(UserError, match=r"unknown key 'training\.learnig_rate'"):
        load_config(write(tmp_path, "training:\n  learnig_rate: 0.1\n"))


def test_wrong_type_names_the_path(tmp_path):
    with pytest.raises(UserError, match=r"training\.batch_size must be an integer"):
        load_config(write(tmp_path, "training:\n  batch_size: eight\n"))
    with pytest.raises(UserError, match=r"adapter\.kind must be one of"):
        load_config(write(tmp_path, "adapter:\n  kind: qlora\n"))


def test_set_overrides_any_key():
    config = load_config(None, ["training.learning_rate=3e-5", "adapter.target_modules=[q_proj]",
                                "data.path=/x/y", "evaluation.subset=4", "method.final_annealing=false"])
    assert config.training.learning_rate == 3e-5
    assert config.adapter.target_modules == ["q_proj"]
    assert config.data.path == "/x/y"
    assert config.evaluation.subset == 4
    assert config.method.final_annealing is False
    with pytest.raises(UserError, match="unknown key 'training.nope'"):
        load_config(None, ["training.nope=1"])
    with pytest.raises(UserError, match="key=value"):
        load_config(None, ["training.learning_rate"])


def test_missing_and_malformed_files(tmp_path):
    with pytest.raises(UserError, match="not found"):
        load_config(tmp_path / "absent.yaml")
    with pytest.raises(UserError, match="not valid YAML"):
        load_config(write(tmp_path, "a: [1, 2\n"))


@pytest.mark.parametrize("path", CONFIGS, ids=[str(p.name) for p in CONFIGS])
def test_every_shipped_config_validates(path):
    load_config(path)


@pytest.mark.parametrize("path", SWEEPS, ids=[str(p.name) for p in SWEEPS])
def test_every_shipped_sweep_validates(path):
    from utils.sweep import load_sweep

    spec = load_sweep(path)
    assert len(spec.combinations()) >= 4


def test_shipped_accelerate_configs_are_yaml():
    import yaml

    for path in (CONFIG_ROOT / "accelerate").glob("*.yaml"):
        data = yaml.safe_load(path.read_text())
        assert data["distributed_type"] in ("MULTI_GPU", "NO", "MULTI_CPU")


def test_sweep_file_errors(tmp_path):
    from utils.sweep import load_sweep

    path = tmp_path / "s.yaml"
    path.write_text(f"base: {CONFIG_ROOT / 'sugd.yaml'}\ngrid:\n  training.learnig_rate: [1, 2]\n")
    with pytest.raises(UserError, match="unknown key 'training.learnig_rate'"):
        load_sweep(path)
    path.write_text(f"base: {CONFIG_ROOT / 'sugd.yaml'}\ngrid: {{}}\n")
    with pytest.raises(UserError, match="'grid' must map"):
        load_sweep(path)
