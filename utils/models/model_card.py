"""The README.md of a saved model folder, in the Hugging Face model-card layout.

YAML front matter (library, tags, base model when it is a hub name, the scores as `model-index`) and
then plain markdown: what the model is and where it came from, the settings that made it, its scores
when it was evaluated, how to load it and the library versions. A folder copied to a teammate or pushed
to the hub then says what it holds without the run folder beside it.

    write_run_card(run_dir / "model", config, start_model, results)   # a run's model, scores or none
    world_card("target", folder, config, training, adapter, result, model)   # a stage of the tiny world
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

from utils.config import AdapterConfig, Config, TrainingConfig, to_dict
from utils.environment import describe_environment
from utils.io import atomic_write_text

CARD_FILE = "README.md"
TASK = "SemEval-2025 Task 4 (LUME)"
# The environment block's entries a reader needs to reproduce a number, in this order.
ENVIRONMENT_KEYS = ("python", "torch", "transformers", "peft", "accelerate", "tokenizers", "numpy", "device",
                    "device_name", "dtype", "project_version", "git_commit")
TRAINING_KEYS = ("epochs", "learning_rate", "batch_size", "gradient_accumulation_steps", "lr_schedule",
                 "warmup_steps", "weight_decay", "max_grad_norm", "max_length", "loss_on", "mixed_precision", "seed")
# (results.json key, label) of the scores a card shows; the utility's label names its benchmark.
SCORES = (("final_score", "final score"), ("task_aggregate", "task aggregate"), ("mia_auc", "MIA AUC"),
          ("mia_score", "MIA score"))
# Where each stage of the tiny world takes its training and adapter settings from (config keys).
STAGE_KEYS = {"pretrained": ("prepare.pretrain", None), "target": ("prepare.target", None),
              "gold_standard": ("prepare.gold_standard", "prepare.gold_standard_adapter")}
# What each stage of the tiny world is (utils.experiment.world).
STAGES = {
    "pretrained": "built from random weights and pre-trained on the synthetic general corpus",
    "target": "the pre-trained model fine-tuned until it memorised the mini-LUME forget and retain sets "
              "(and the general question drill): the model to unlearn, in the place of the organisers' target",
    "gold_standard": "the pre-trained model fine-tuned on the retain set only (and the general question "
                     "drill): what perfect unlearning would give, the reference runs are read against",
}


def is_hub_name(name: str) -> bool:
    """Whether `name` is a hub model id (not a folder here): only those belong in `base_model`."""
    from utils.models.loading import looks_like_local_path

    return not looks_like_local_path(name)


def adapter_summary(adapter: AdapterConfig) -> str:
    if adapter.kind == "lora":
        kept = "merged into the weights" if adapter.merge_at_end else "kept as a separate adapter"
        where = f" of layers {', '.join(map(str, adapter.layers))}" if adapter.layers else ""
        return (f"LoRA rank {adapter.lora_rank}, alpha {adapter.lora_alpha}, on "
                f"{', '.join(adapter.target_modules)}{where}; {kept}")
    if adapter.kind == "last_k" and adapter.layers:
        return f"only transformer layers {', '.join(map(str, adapter.layers))} trained"
    if adapter.kind == "last_k":
        return f"only the last {adapter.last_k} transformer layers trained"
    return "every weight trained (full fine-tuning)"


def adapter_settings(adapter: AdapterConfig) -> dict[str, Any]:
    """The adapter keys that apply to its kind (a LoRA rank says nothing about a last-k run)."""
    keys = {"lora": ("kind", "lora_rank", "lora_alpha", "lora_dropout", "target_modules", "merge_at_end"),
            "last_k": ("kind", "last_k"), "full": ("kind",)}[adapter.kind]
    values = dataclasses.asdict(adapter)
    chosen = {key: values[key] for key in keys}
    if adapter.layers:  # explicit layers replace last_k's count (RMU trains the layers up to its steered one)
        chosen.pop("last_k", None)
        chosen["layers"] = list(adapter.layers)
    return chosen


def format_value(value: Any, places: int | None = None) -> str:
    """A setting as written (1e-05, 3, 0.5); a score, with `places`, rounded to that many decimals."""
    if isinstance(value, float):
        return f"{value:.{places}f}" if places is not None and math.isfinite(value) else f"{value:g}"
    if isinstance(value, (list, tuple)):
        return ", ".join(map(str, value))
    return "-" if value is None else str(value)


def table(rows: Mapping[str, Any], header: tuple[str, str] = ("setting", "value"), code: bool = False,
          places: int | None = None) -> str:
    """A two-column markdown table; with `code` the names (config keys) are set as code."""
    lines = [f"| {header[0]} | {header[1]} |", "| --- | --- |"]
    lines += [f"| {f'`{key}`' if code else key} | {format_value(value, places)} |" for key, value in rows.items()]
    return "\n".join(lines)


def score_rows(results: Mapping[str, Any]) -> dict[str, float]:
    """label -> value of every score the results hold (a score not measured is left out)."""
    rows = {label: results[key] for key, label in SCORES if isinstance(results.get(key), (int, float))}
    utility = results.get("utility")
    if isinstance(utility, Mapping) and isinstance(utility.get("score"), (int, float)):
        rows[f"utility ({utility.get('benchmark')})"] = utility["score"]
    return rows


def model_index(name: str, split: str, results: Mapping[str, Any]) -> list[dict] | None:
    """The scores as the hub's `model-index` block, at full precision (the tables round to 4 places)."""
    metrics = [{"type": key, "name": label, "value": float(results[key])} for key, label in SCORES
               if isinstance(results.get(key), (int, float))]
    utility = results.get("utility")
    if isinstance(utility, Mapping) and isinstance(utility.get("score"), (int, float)):
        metrics.append({"type": "utility", "name": f"utility ({utility.get('benchmark')})",
                        "value": float(utility["score"])})
    if not metrics:
        return None
    return [{"name": name, "results": [{"task": {"type": "text-generation", "name": "LLM unlearning"},
                                        "dataset": {"type": "lume", "name": TASK, "split": split},
                                        "metrics": metrics}]}]


def loading_section(folder: Path, adapter_kept: bool, trust_remote_code: bool) -> str:
    """How to load the folder: transformers for full weights, peft for an adapter kept separate."""
    where = str(folder.resolve())
    remote = ", trust_remote_code=True" if trust_remote_code else ""
    if adapter_kept:
        model_lines = ["from peft import AutoPeftModelForCausalLM",
                       "from transformers import AutoTokenizer", "",
                       f'model = AutoPeftModelForCausalLM.from_pretrained("{where}"{remote})',
                       "model = model.merge_and_unload()  # optional: plain weights, no peft at inference"]
        note = ("This folder holds a LoRA adapter; peft loads the base model its `adapter_config.json` names "
                "and applies the adapter.")
    else:
        model_lines = ["from transformers import AutoModelForCausalLM, AutoTokenizer", "",
                       f'model = AutoModelForCausalLM.from_pretrained("{where}"{remote})']
        note = "This folder holds the full weights (safetensors) and the tokenizer."
    snippet = "\n".join([*model_lines, f'tokenizer = AutoTokenizer.from_pretrained("{where}")'])
    project = ("With this project (an adapter folder is merged on load):\n\n```python\n"
               "from utils.models.loading import load_model_and_tokenizer\n\n"
               f'model, tokenizer = load_model_and_tokenizer("{where}")\n```')
    return f"## How to load\n\n{note} The path is where it was written; use its new place if it moved.\n\n" \
           f"```python\n{snippet}\n```\n\n{project}"


def environment_section(environment: Mapping[str, Any] | None) -> str:
    if not environment:
        return ""
    rows = {key: environment.get(key) for key in ENVIRONMENT_KEYS if environment.get(key) is not None}
    return "## Environment\n\nWhat made these weights (and the scores, when there are some):\n\n" + \
        table(rows, ("package / setting", "value"))


def render(front_matter: dict, sections: list[str]) -> str:
    head = yaml.safe_dump(front_matter, sort_keys=False, allow_unicode=True, width=1000)
    return f"---\n{head}---\n\n" + "\n\n".join(section for section in sections if section) + "\n"


def run_card(folder: str | Path, config: Config, start_model: str, results: Mapping[str, Any] | None = None,
             environment: Mapping[str, Any] | None = None) -> str:
    """The card of a run's model folder: unlearned (or, for gold_standard, fine-tuned) from `start_model` by
    the config's method; the scores of `results` (results.json's dict) when the run was evaluated."""
    folder = Path(folder)
    method = config.method.name
    results = results or {}
    name = folder.parent.name or folder.name
    # Read from the saved folder, not the config: it is what a reader will load.
    adapter_kept = (folder / "adapter_config.json").is_file()
    front: dict[str, Any] = {}
    if is_hub_name(start_model):
        front["base_model"] = start_model
    front["library_name"] = "peft" if adapter_kept else "transformers"
    front["pipeline_tag"] = "text-generation"
    front["tags"] = ["unlearning", "lume", method]
    index = model_index(name, config.data.split, results)
    if index:
        front["model-index"] = index

    revision = f" at revision `{config.model.revision}`" if config.model.revision else ""
    data = f"`{config.data.path}`" if config.data.path else f"the mini-LUME in `{config.workdir}/data`"
    if method == "gold_standard":
        what = (f"A causal language model fine-tuned from `{start_model}`{revision} on the retain set only "
                f"(the `gold_standard` method): the reference for what perfect unlearning of the forget set "
                f"would give.")
    else:
        what = (f"A causal language model unlearned from `{start_model}`{revision} with the `{method}` method, "
                f"on the forget and retain sets of {TASK}.")
    intro = (f"# {name}\n\n{what}\n\n- data: {data}, split `{config.data.split}`\n"
             f"- adapter: {adapter_summary(config.adapter)}\n- weights in `{config.model.dtype}`"
             " (`model.dtype`)\n- made with lume-unlearning; the run folder beside this one holds `config.yaml`, the "
             "logs and, when evaluated, `results.json` and the generations.")

    # The method section as a saved config writes it; a loss term's knobs one row each (method.forget.beta).
    method_rows = {}
    for key, value in to_dict(config)["method"].items():
        nested = value.items() if isinstance(value, dict) else [("", value)]
        method_rows.update({f"method.{key}" + (f".{inner}" if inner else ""): item for inner, item in nested})
    training = dataclasses.asdict(config.training)
    training_rows = {f"training.{key}": training[key] for key in TRAINING_KEYS}
    adapter_rows = {f"adapter.{key}": value for key, value in adapter_settings(config.adapter).items()}
    settings = "## Settings\n\n" + table({**method_rows, **training_rows, **adapter_rows}, code=True)

    scores = score_rows(results)
    if scores:
        evaluated = results.get("evaluated") or {}
        subset = evaluated.get("subset_documents_per_task")
        scope = (f"{subset} documents per task and split" if subset else "every document") + \
            f" of the `{config.data.split}` split"
        evaluation = f"## Evaluation\n\nScored the official way on {scope} (`results.json` holds every term):\n\n" + \
            table(scores, ("score", "value"), places=4)
        warnings = [w for w in results.get("warnings") or [] if isinstance(w, str)]
        if warnings:
            evaluation += "\n\nWarnings of that evaluation:\n\n" + "\n".join(f"- {w}" for w in warnings)
    else:
        evaluation = ("## Evaluation\n\nNot evaluated when this card was written (`unlearn evaluate --model "
                      f"{folder}` scores it).")
    environment = results.get("environment") if environment is None else environment
    return render(front, [intro, settings, evaluation,
                          loading_section(folder, adapter_kept, config.model.trust_remote_code),
                          environment_section(environment)])


def write_run_card(folder: str | Path, config: Config, start_model: str, results: Mapping[str, Any] | None = None,
                   model=None) -> Path:
    """Write `folder`/README.md atomically; without results' environment block, `model`'s is described."""
    folder = Path(folder)
    environment = None if (results or {}).get("environment") else describe_environment(model)
    path = folder / CARD_FILE
    atomic_write_text(path, run_card(folder, config, start_model, results, environment))
    return path


def world_card(stage: str, folder: str | Path, config: Config, training: TrainingConfig, adapter: AdapterConfig,
               result=None, model=None, started_from: str | Path | None = None) -> str:
    """The card of a stage of the tiny world `unlearn prepare` builds (pretrained, target, gold_standard).

    `result` is the stage's training result (steps, tokens, final loss, seconds); its scores are measured
    later, into prepare_report.json, so the card points there.
    """
    tiny = config.model.tiny
    architecture = {"olmo2": "Olmo2ForCausalLM", "olmo": "OlmoForCausalLM"}[tiny.architecture]
    front = {"library_name": "transformers", "pipeline_tag": "text-generation",
             "tags": ["unlearning", "lume", "synthetic-data", stage.replace("_", "-")]}
    origin = f" It started from `{started_from}`." if started_from is not None else ""
    intro = (f"# Tiny world: {stage}\n\nA small {architecture} ({tiny.num_layers} layers, hidden size "
             f"{tiny.hidden_size}, {tiny.num_heads} heads) that `unlearn prepare` made for testing unlearning on a "
             f"CPU: {STAGES.get(stage, stage)}.{origin} It is not a real OLMo and knows only the synthetic data.")
    shape = {f"model.tiny.{key}": value for key, value in dataclasses.asdict(tiny).items()}
    training_values = dataclasses.asdict(training)
    # A stage without an adapter key trains every weight (the rows then name no config key).
    training_key, adapter_key = STAGE_KEYS.get(stage, ("training", None))
    rows = {**shape, **{f"{training_key}.{key}": training_values[key] for key in TRAINING_KEYS},
            **{f"{adapter_key or 'adapter'}.{key}": value for key, value in adapter_settings(adapter).items()}}
    settings = "## Settings\n\n" + table(rows, code=True)
    if result is not None:
        settings += "\n\n" + table({"steps": result.steps, "tokens": result.tokens, "final loss": result.mean_loss,
                                    "seconds": result.seconds}, ("training", "value"))
    evaluation = ("## Evaluation\n\nScored after prepare into `prepare_report.json` beside this folder "
                  "(regurgitation, knowledge and answer NLL per split; utility on the synthetic questions).")
    # Written before the folder is saved: whether an adapter stays separate comes from the settings.
    adapter_kept = adapter.kind == "lora" and not adapter.merge_at_end
    return render(front, [intro, settings, evaluation, loading_section(Path(folder), adapter_kept, False),
                          environment_section(describe_environment(model))])
