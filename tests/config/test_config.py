import re
from pathlib import Path

import pytest

from methods.registry import typed
from utils.config import Config
from utils.config import load_config as read_config
from utils.errors import UserError


def load_config(path=None, overrides=None):
    """The config as a run reads it: loaded, then its method section typed by the registry."""
    return typed(read_config(path, overrides))

CONFIG_ROOT = Path(__file__).resolve().parents[2] / "configs"
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
                                "data.path=/x/y", "evaluation.subset=4", "method.name=agad",
                                "method.final_annealing=false"])
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


@pytest.mark.parametrize("text", ["", "# only a comment\n", "null\n", "~\n"])
def test_an_empty_config_file_is_refused(tmp_path, text):
    path = write(tmp_path, text)
    with pytest.raises(UserError, match=re.escape(f"config file {path} is empty")):
        load_config(path)


def test_a_yaml_error_names_file_line_and_column(tmp_path):
    path = write(tmp_path, "training:\n  learning_rate: 1e-4\n  epochs: 2: 3\n")
    expected = f"config file {path} is not valid YAML at line 3, column 12: mapping values are not allowed here"
    with pytest.raises(UserError, match=re.escape(expected)):
        load_config(path)


def test_a_config_that_is_not_utf8_names_the_byte_offset(tmp_path):
    path = tmp_path / "c.yaml"
    data = b"training:\n  epochs: 2 # caf\xe9\n"
    path.write_bytes(data)
    expected = f"{path}: not UTF-8 text (byte 0xe9 at byte offset {data.index(0xe9)})"
    with pytest.raises(UserError, match=re.escape(expected)):
        load_config(path)


@pytest.mark.parametrize("override, message", [
    ("training.learning_rate=.nan", "training.learning_rate must be a finite number > 0, got nan"),
    ("training.learning_rate=0", "training.learning_rate must be a finite number > 0, got 0.0"),
    ("training.epochs=1e9", "training.epochs must be a finite number > 0 and at most 10000, got 1000000000.0"),
    ("training.epochs=1e999", "training.epochs must be a finite number > 0 and at most 10000, got inf"),
    ("training.epochs=0", "training.epochs must be a finite number > 0 and at most 10000, got 0.0"),
    ("training.batch_size=0", "training.batch_size must be a positive integer, got 0"),
    ("training.gradient_accumulation_steps=0", "training.gradient_accumulation_steps must be a positive integer"),
    ("training.max_length=0", "training.max_length must be a positive integer, got 0"),
    ("training.warmup_steps=-1", "training.warmup_steps must be 0 or more, got -1"),
    ("training.max_grad_norm=-1", "training.max_grad_norm must be a finite number >= 0, got -1.0"),
    ("training.weight_decay=.inf", "training.weight_decay must be a finite number >= 0, got inf"),
    ("training.max_micro_batch_tokens=0", "training.max_micro_batch_tokens must be a positive integer (or null)"),
    ("training.seed=-1", "training.seed must be an integer in [0, 4294967295], got -1"),
    ("adapter.lora_rank=0", "adapter.lora_rank must be a positive integer, got 0"),
    ("adapter.lora_alpha=0", "adapter.lora_alpha must be a positive integer, got 0"),
    ("adapter.lora_dropout=1", "adapter.lora_dropout must be a finite number in [0, 1), got 1.0"),
    ("adapter.target_modules=[]", "adapter.target_modules must name at least one module"),
    ("adapter.last_k=0", "adapter.last_k must be a positive integer, got 0"),
    ("method.forget.loss=npo method.forget.beta=0", "method.forget.beta must be a finite number > 0, got 0.0"),
    ("method.name=gd method.retain_weight=-0.5", "method.retain_weight must be a finite number >= 0, got -0.5"),
    ("method.name=npo method.retain_weight=-1", "method.retain_weight must be a finite number >= 0, got -1.0"),
    ("method.name=gd method.forget.loss=wga method.forget.beta=-1", "method.forget.beta must be a finite number >= 0, got -1.0"),
    ("method.positive_factor=.nan", "method.positive_factor must be a finite number >= 0, got nan"),
    ("method.chunk_size=0", "method.chunk_size must be a positive integer, got 0"),
    ("method.positive_ratio=-1", "method.positive_ratio must be 0 or more, got -1"),
    ("method.name=agad method.interleaving_factor=0",
     "method.interleaving_factor must be a finite number > 0, got 0.0"),
    ("method.name=agad method.annealing_fraction=1.5",
     "method.annealing_fraction must be a finite number in (0, 1], got 1.5"),
    ("method.name=agad method.chunk_size=0", "method.chunk_size must be a positive integer, got 0"),
    ("method.forget_loss_ceiling=-1", "method.forget_loss_ceiling must be a finite number > 0 (or null), got -1.0"),
    ("evaluation.max_new_tokens=0", "evaluation.max_new_tokens must be a positive integer, got 0"),
    ("evaluation.batch_size=-1", "evaluation.batch_size must be a positive integer, got -1"),
    ("evaluation.nll_batch_size=0", "evaluation.nll_batch_size must be a positive integer, got 0"),
    ("evaluation.subset=0", "evaluation.subset must be at least 1 document per task (or null), got 0"),
    ("evaluation.mmlu_shots=-1", "evaluation.mmlu_shots must be 0 or more, got -1"),
    ("evaluation.mmlu_threshold=1.5", "evaluation.mmlu_threshold must be a finite number in [0, 1], got 1.5"),
    ("evaluation.per_phase_subset=-1", "evaluation.per_phase_subset must be 0 or more (or null), got -1"),
    ("evaluation.per_phase_max_new_tokens=0", "evaluation.per_phase_max_new_tokens must be a positive integer"),
    ("prepare.target.learning_rate=-1", "prepare.target.learning_rate must be a finite number > 0, got -1.0"),
    ("prepare.pretrain.epochs=1e999", "prepare.pretrain.epochs must be a finite number > 0 and at most 10000"),
    ("prepare.gold_standard_adapter.lora_dropout=-0.1", "prepare.gold_standard_adapter.lora_dropout must be"),
    ("synthetic.documents_per_task=0", "synthetic.documents_per_task must be a positive integer, got 0"),
    ("model.tiny.num_layers=0", "model.tiny.num_layers must be a positive integer, got 0"),
    ("model.tiny.hidden_size=130", "model.tiny.hidden_size (130) must be divisible by model.tiny.num_heads (4)"),
    ("model.tiny.hidden_size=12", "model.tiny.hidden_size / model.tiny.num_heads must be even"),
])
def test_every_number_is_range_checked_with_its_key_path(override, message):
    with pytest.raises(UserError, match="^config: " + re.escape(message)) as caught:
        load_config(None, override.split(" "))
    assert "\n" not in str(caught.value)


def test_a_very_long_integer_is_compared_not_converted(tmp_path):
    with pytest.raises(UserError, match="training.seed must be an integer in"):
        load_config(write(tmp_path, f"training:\n  seed: {10**400}\n"))
    with pytest.raises(UserError, match=r"training.batch_size must be an integer in \[1, 65536\], got 1000"):
        load_config(write(tmp_path, f"training:\n  batch_size: {10**400}\n"))


def test_values_inside_their_ranges_load():
    config = load_config(None, ["method.forget_loss_ceiling=gold_standard", "evaluation.per_phase_subset=0",
                                "evaluation.subset=null", "adapter.lora_dropout=0", "method.name=agad",
                                "method.annealing_fraction=1",
                                "training.epochs=10000", "training.max_grad_norm=0"])
    assert config.method.forget_loss_ceiling == "gold_standard" and config.evaluation.per_phase_subset == 0


@pytest.mark.parametrize("path", CONFIGS, ids=[str(p.name) for p in CONFIGS])
def test_every_shipped_config_validates(path):
    load_config(path)


def test_the_shipped_config_list_covers_every_folder():
    assert {p.parent.name for p in CONFIGS} >= {"configs", "olmo-1b", "olmo-7b", "real"}


@pytest.mark.parametrize("path", SWEEPS, ids=[str(p.name) for p in SWEEPS])
def test_every_shipped_sweep_validates(path):
    from utils.experiment.sweep import load_sweep

    spec = load_sweep(path)
    assert len(spec.combinations()) >= 4


def test_shipped_accelerate_configs_are_yaml():
    import yaml

    for path in (CONFIG_ROOT / "accelerate").glob("*.yaml"):
        data = yaml.safe_load(path.read_text())
        assert data["distributed_type"] in ("MULTI_GPU", "NO", "MULTI_CPU")


def test_sweep_file_errors(tmp_path):
    from utils.experiment.sweep import load_sweep

    path = tmp_path / "s.yaml"
    path.write_text(f"base: {CONFIG_ROOT / 'sugd.yaml'}\ngrid:\n  training.learnig_rate: [1, 2]\n")
    with pytest.raises(UserError, match="unknown key 'training.learnig_rate'"):
        load_sweep(path)
    path.write_text(f"base: {CONFIG_ROOT / 'sugd.yaml'}\ngrid: {{}}\n")
    with pytest.raises(UserError, match="'grid' must map"):
        load_sweep(path)


# --------------------------------------------------------------------------------------------
# The method section: each method's own settings class


def test_the_method_section_is_the_named_methods_own_settings(tmp_path):
    from methods import gd, sugd
    from methods.losses.kl import KL
    from methods.losses.nll import NLL
    from methods.losses.npo import NPO
    from utils.config import MethodSection, save_config, to_dict
    from utils.config import load_config as untyped

    assert type(untyped(None).method) is MethodSection  # the config layer leaves the section to the registry
    assert type(load_config(None).method) is sugd.Settings  # the default method
    config = load_config(write(tmp_path, "method:\n  name: gd\n  forget: {loss: npo, beta: 0.2}\n  retain: kl\n"
                                         "  retain_weight: 0.5\n"))
    assert type(config.method) is gd.Settings
    assert (config.method.forget, config.method.retain, config.method.retain_weight) == (NPO(beta=0.2), KL(), 0.5)
    assert gd.Settings().retain == NLL() and load_config(None, ["method.name=gd", "method.retain=kl"]).method.retain == KL()
    # Only the method's own keys are written, and they load back to the same settings.
    assert to_dict(config)["method"] == {"name": "gd", "forget_loss_ceiling": None, "forget_loss_ceiling_scope": "answer",
                                         "forget": {"loss": "npo", "beta": 0.2}, "retain": {"loss": "kl"},
                                         "retain_weight": 0.5}
    assert to_dict(load_config(None, ["method.name=gold_standard"]))["method"] == {"name": "gold_standard"}
    save_config(config, tmp_path / "saved.yaml")
    assert load_config(tmp_path / "saved.yaml") == config


@pytest.mark.parametrize("overrides, message", [
    (["method.name=ga", "method.chunk_size=3"],
     "config: method.chunk_size is not a setting of ga (it belongs to agad, sugd); ga takes: forget_loss_ceiling, "),
    (["method.name=gold_standard", "method.retain_weight=1"],
     "config: method.retain_weight is not a setting of gold_standard (it belongs to gd, idk_dpo, idk_nll, rmu)"),
    (["method.name=npo", "method.forget_loss=ascent"], "config: method.forget_loss of npo is always 'npo', got 'ascent'"),
    (["method.positive_ratio=3", "method.name=agad"],
     "config: method.positive_ratio is not a setting of agad (it belongs to sugd)"),
    (["method.name=ga", "method.chunk_szie=3"], "config: unknown key 'method.chunk_szie' (allowed here: "),
    (["method.name=sgd"],
     "config: method.name: unknown method 'sgd' (known: ga, gd, agad, sugd, gold_standard, rmu, idk_nll, idk_dpo)"),
    (["method.name=3"], "config: method.name must be a string, got 3"),
    (["method=3"], "config: method must be a mapping, got int"),
    (["method.name=gd", "method.retain=none"], "config: method.retain must be one of nll, kl, got 'none'"),
    (["method.forget=descent"],
     "config: method.forget: unknown forget loss 'descent' (known: ascent, npo, simnpo, wga, undial)"),
    (["method.name=gold_standard", "method.npo_beta=1"],
     "config: method.npo_beta is a knob of the npo loss term, which gold_standard does not use"),
])
def test_a_key_of_another_method_is_refused_naming_the_method(overrides, message):
    with pytest.raises(UserError, match="^" + re.escape(message)) as caught:
        load_config(None, overrides)
    assert "\n" not in str(caught.value)


def test_a_key_of_another_method_in_a_file_names_the_method(tmp_path):
    path = write(tmp_path, "method:\n  name: ga\n  forget: ascent\n  retain_weight: 0.5\n")
    with pytest.raises(UserError, match=re.escape("method.retain_weight is not a setting of ga (it belongs to gd, "
                                                  "idk_dpo, idk_nll, rmu)")):
        load_config(path)


def test_bounds_and_help_are_the_fields_metadata():
    from methods import gd, sugd
    from methods.losses.npo import NPO
    from utils.config import POSITIVE, TrainingConfig, bounds_of, knob_table

    assert bounds_of(NPO) == {"beta": POSITIVE}
    assert {"forget_loss_ceiling", "retain_weight"} <= set(bounds_of(gd.Settings))
    assert "chunk_size" in bounds_of(sugd.Settings) and "chunk_size" not in bounds_of(gd.Settings)
    assert bounds_of(TrainingConfig)["learning_rate"] == POSITIVE
    assert knob_table(NPO) == [("beta", "0.1", "a finite number > 0", "NPO's inverse temperature")]


def test_a_resume_compares_the_methods_own_settings(tmp_path):
    import yaml

    from utils.config import save_config, to_dict
    from utils.experiment.run import check_resumable

    config = load_config(None, ["method.name=ga", f"workdir={tmp_path}"])
    save_config(config, tmp_path / "config.yaml")
    check_resumable(config, tmp_path)
    with pytest.raises(UserError, match=r"different method\.forget than this config"):
        check_resumable(load_config(None, ["method.name=ga", "method.forget.loss=npo", f"workdir={tmp_path}"]),
                        tmp_path)
    with pytest.raises(UserError, match=r"different method\.name than this config"):
        check_resumable(load_config(None, ["method.name=gd", f"workdir={tmp_path}"]), tmp_path)
    # A run saved before the settings were typed holds every method's keys; ga never read the others. One saved
    # before the loss terms holds the flat knobs of every term.
    saved = to_dict(config)
    del saved["method"]["forget"]
    saved["method"].update(retain_loss="none", chunk_size=32, retain_weight=1.0, forget_loss="ascent", npo_beta=0.1,
                           simnpo_beta=4.5, simnpo_gamma=0.0, wga_beta=1.0, undial_beta=10.0)
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(saved))
    check_resumable(config, tmp_path)
    # A run saved before a training setting existed ran as it did then: an fp32 run continues under any
    # master_weights (they change nothing there); a bf16 last-k run stepped in place, so only "none" continues it.
    del saved["training"]["master_weights"]
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(saved))
    check_resumable(config, tmp_path)
    check_resumable(load_config(None, ["method.name=ga", "training.master_weights=none", f"workdir={tmp_path}"]),
                    tmp_path)
    bf16 = ["method.name=ga", "model.dtype=bfloat16", "adapter.kind=last_k", f"workdir={tmp_path}"]
    saved = to_dict(load_config(None, bf16))
    del saved["training"]["master_weights"]
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(saved))
    with pytest.raises(UserError, match=r"different training\.master_weights than this config"):
        check_resumable(load_config(None, bf16), tmp_path)
    check_resumable(load_config(None, [*bf16, "training.master_weights=none"]), tmp_path)


def test_a_partly_given_section_keeps_the_defaults_of_its_place():
    default = load_config(None, [])
    tuned = load_config(None, ["training.learning_rate=1e-3", "prepare.target.epochs=5"])
    # Only the named keys change: the run's 3 epochs and the target's memorising schedule stay.
    assert tuned.training.learning_rate == 1e-3 and tuned.training.epochs == default.training.epochs == 3
    assert tuned.prepare.target.epochs == 5
    assert tuned.prepare.target.learning_rate == default.prepare.target.learning_rate == 2e-3
    assert tuned.prepare.target.warmup_steps == default.prepare.target.warmup_steps == 20
