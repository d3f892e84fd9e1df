"""`unlearn prepare`: the embedded default world, built once and cached.

Stages, each in its own folder under the work dir and skipped when its inputs are unchanged:
  data/            the mini-LUME in the official layout + the general corpus and its questions
  tokenizer/       byte-level BPE trained on retain + general text (never forget or MIA documents)
  pretrained/      the tiny OLMo pre-trained on the general corpus
  target/          pretrained + memorised forget and retain (what the organisers released)
  gold_standard/   pretrained + retain only (what perfect unlearning would look like)
Each stage's cache key is a hash of its own settings and of its inputs' keys, so changing the model
size rebuilds the models but not the data.
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import asdict
from pathlib import Path

import torch

from utils.config import AdapterConfig, Config
from utils.data.lume import LumeData, load_lume
from utils.environment import describe_environment
from utils.errors import UserError
from utils.io import AtomicDirectory, atomic_write_json, file_sha256, read_jsonl

STAGE_FILE = "stage.json"
REPORT_VERSION = 3  # bump when the report gains fields, so cached reports are recomputed


def stable_hash(*parts) -> str:
    text = json.dumps(parts, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def stage_is_current(directory: Path, key: str) -> bool:
    marker = directory / STAGE_FILE
    if not marker.is_file():
        return False
    try:
        return json.loads(marker.read_text()).get("key") == key
    except json.JSONDecodeError:
        return False


def read_texts(path: Path) -> list[str]:
    """The `text` field of every row of a JSONL file (the general corpus and its question drill)."""
    if not path.is_file():
        raise UserError(f"general corpus file not found: {path}")
    return [row["text"] for _, row in read_jsonl(path)]


def fresh_log(path: Path) -> Path:
    """A stage's training log, emptied first: the trainer appends, so a rebuilt (or once killed) stage
    would otherwise continue the old curve with step numbers starting again at 1."""
    path.unlink(missing_ok=True)
    return path


# Training settings added after worlds were first built, with the value that means "as before": left
# out of the cache key at that value, so a new option does not rebuild every existing world.
LATER_TRAINING_SETTINGS = {"group_by_length": False, "max_micro_batch_tokens": None, "append_eos": None,
                           "master_weights": "auto", "checkpoint_every": 1, "keep_checkpoints": 1,
                           "report_to": "auto", "sharding": "none", "loss_reduction": "example",
                           "gradient_checkpointing": False, "select": {"every": "phase", "keep": "last"},
                           "patience": None, "budget_minutes": None, "stop_chunk_at": None}


def without_neutral(settings: dict, neutral: dict) -> dict:
    """`settings` less the keys that still hold the neutral value they had before they existed."""
    return {name: value for name, value in settings.items() if name not in neutral or value != neutral[name]}


def training_key(training) -> dict:
    """The training settings as a cache key (see LATER_TRAINING_SETTINGS)."""
    return without_neutral(asdict(training), LATER_TRAINING_SETTINGS)


# Model-shape settings added after worlds were cached: left out of the key at their defaults, so those
# worlds stay valid.
LATER_TINY_SETTINGS = {"architecture": "olmo2"}


def tiny_key(tiny) -> dict:
    # A given tokenizer is keyed by its content, in the tokenizer stage's key.
    settings = {name: value for name, value in asdict(tiny).items() if name != "tokenizer"}
    return without_neutral(settings, LATER_TINY_SETTINGS)


def given_tokenizer(source: str | None) -> Path | None:
    """The folder of a tokenizer the world uses instead of training one ("olmo": the real OLMo tokenizer)."""
    if source is None:
        return None
    if source == "olmo":
        from utils.data.olmo_assets import find_assets, missing_reason

        assets = find_assets()
        if assets is None:
            raise UserError(f"model.tiny.tokenizer: olmo: {missing_reason()}")
        return assets / "tokenizer"
    folder = Path(source).expanduser()
    if not (folder / "tokenizer.json").is_file():
        raise UserError(f"model.tiny.tokenizer: no tokenizer.json in {folder}")
    return folder


def lume_fingerprint(data: LumeData) -> str:
    return stable_hash([(i.id, i.input, i.output) for i in data.forget], [(i.id, i.input, i.output) for i in data.retain])


class World:
    """Paths of a prepared world, for the commands that use it."""

    def __init__(self, workdir: str | Path):
        self.root = Path(workdir)
        self.data = self.root / "data"
        self.tokenizer = self.root / "tokenizer"
        self.pretrained = self.root / "pretrained"
        self.target = self.root / "target"
        self.gold_standard = self.root / "gold_standard"
        self.report = self.root / "prepare_report.json"
        self.multiple_choice = self.data / "general" / "multiple_choice.jsonl"


def prepare(config: Config, out: str | Path | None = None, progress: bool = True, log=print) -> dict:
    """Build (or reuse) every stage of the world and return the prepare report. The work folder is locked while
    it is written, and must not be, hold or lie in a folder the world reads (a given data.path, its MIA folder
    or tokenizer): its stages replace their folders whole."""
    from utils.folders import check_not_input, folder_lock, real

    root = Path(out or config.workdir)
    tokenizer = config.model.tiny.tokenizer
    data = config.data.path
    if data is not None and (Path(data) / STAGE_FILE).is_file() and real(data) == real(World(root).data):
        data = None  # the mini-LUME this work folder made itself: its own output, not an input
    check_not_input(root, {"data folder (data.path)": data,
                           "MIA folder (data.mia_path)": None if config.data.mia_path == "none" else config.data.mia_path,
                           "tokenizer (model.tiny.tokenizer)": None if tokenizer == "olmo" else tokenizer})
    with folder_lock(root, "unlearn prepare"):
        return _prepare(config, root, progress, log)


def _prepare(config: Config, out: Path, progress: bool, log) -> dict:
    from methods.engine.finetune import finetune
    from utils.data.synthetic import generate_mini_lume
    from utils.data.tokenization import encode_item, encode_text
    from utils.models.loading import build_tiny_model, load_tokenizer, train_tokenizer
    from utils.models.model_card import world_card

    world = World(out)
    world.root.mkdir(parents=True, exist_ok=True)
    timings: dict[str, float] = {}

    data_key = stable_hash(asdict(config.synthetic))
    if not stage_is_current(world.data, data_key):
        log(f"[prepare] generating the mini-LUME into {world.data}")
        started = time.perf_counter()
        with AtomicDirectory(world.data) as tmp:
            generate_mini_lume(tmp, config.synthetic)
            atomic_write_json(tmp / STAGE_FILE, {"key": data_key})
        timings["data"] = time.perf_counter() - started
    lume = load_lume(config.data.path or world.data, config.data.split)
    # Pre-training reads the whole general corpus; the memorisation stages rehearse only the
    # question drill, which keeps the facts the utility benchmark asks about at a quarter of the cost.
    drill = read_texts(world.data / "general" / "qa_drill.jsonl")
    general = read_texts(world.data / "general" / "corpus.jsonl") + drill
    lume_key = lume_fingerprint(lume)

    given = given_tokenizer(config.model.tiny.tokenizer)
    if given is not None:
        tokenizer_key = stable_hash("given", file_sha256(given / "tokenizer.json"))
        if not stage_is_current(world.tokenizer, tokenizer_key):
            log(f"[prepare] using the tokenizer in {given}")
            with AtomicDirectory(world.tokenizer) as tmp:
                load_tokenizer(str(given)).save_pretrained(tmp)
                atomic_write_json(tmp / STAGE_FILE, {"key": tokenizer_key})
    else:
        tokenizer_key = stable_hash(data_key, lume_key, config.model.tiny.vocab_size)
    if given is None and not stage_is_current(world.tokenizer, tokenizer_key):
        log("[prepare] training the tokenizer on retain + general text")
        started = time.perf_counter()
        texts = [i.training_text for i in lume.retain] + general
        tokenizer = train_tokenizer(texts, config.model.tiny.vocab_size)
        with AtomicDirectory(world.tokenizer) as tmp:
            tokenizer.save_pretrained(tmp)
            atomic_write_json(tmp / STAGE_FILE, {"key": tokenizer_key})
        timings["tokenizer"] = time.perf_counter() - started
    tokenizer = load_tokenizer(str(world.tokenizer))

    def text_examples(texts: list[str], max_length: int):
        return [encode_text(tokenizer, text, max_length=max_length, item_id=f"general{n}")
                for n, text in enumerate(texts)]

    def item_examples(items, training):
        return [encode_item(tokenizer, item, loss_on=training.loss_on, max_length=training.max_length, role="train",
                            add_eos=training.append_eos is not False)
                for item in items]

    prepare_cfg = config.prepare
    pretrain_key = stable_hash(tokenizer_key, tiny_key(config.model.tiny), training_key(prepare_cfg.pretrain))
    if not stage_is_current(world.pretrained, pretrain_key):
        log("[prepare] pre-training the tiny OLMo on the general corpus")
        started = time.perf_counter()
        tiny = config.model.tiny
        model = build_tiny_model(tokenizer, tiny.hidden_size, tiny.num_layers, tiny.num_heads,
                                 tiny.intermediate_size, tiny.max_position_embeddings, seed=prepare_cfg.pretrain.seed,
                                 architecture=tiny.architecture)
        model, result = finetune(model, tokenizer, text_examples(general, prepare_cfg.pretrain.max_length),
                                 prepare_cfg.pretrain, AdapterConfig(kind="full"), name="pretrain",
                                 log_path=fresh_log(world.root / "logs" / "pretrain.jsonl"), progress=progress)
        _save_stage(model, tokenizer, world.pretrained, pretrain_key, result,
                    world_card("pretrained", world.pretrained, config, prepare_cfg.pretrain, AdapterConfig(kind="full"),
                               result, model))
        timings["pretrain"] = time.perf_counter() - started

    stages = (
        ("target", world.target, lume.forget + lume.retain, prepare_cfg.target, None),
        ("gold_standard", world.gold_standard, lume.retain, prepare_cfg.gold_standard,
         prepare_cfg.gold_standard_adapter),
    )
    model_keys = {}
    for name, directory, items, training, adapter in stages:
        adapter = adapter or AdapterConfig(kind="full")
        key = stable_hash(pretrain_key, lume_key, training_key(training), asdict(adapter))
        model_keys[name] = key
        if stage_is_current(directory, key):
            continue
        log(f"[prepare] training the {name.replace('_', ' ')} on {len(items)} items + the general question drill")
        started = time.perf_counter()
        model, _ = _load_local(world.pretrained)
        examples = item_examples(items, training) + text_examples(drill, training.max_length)
        model, result = finetune(model, tokenizer, examples, training, adapter, name=name,
                                 log_path=fresh_log(world.root / "logs" / f"{name}.jsonl"), progress=progress)
        _save_stage(model, tokenizer, directory, key, result,
                    world_card(name, directory, config, training, adapter, result, model, world.pretrained))
        timings[name] = time.perf_counter() - started

    report_key = stable_hash(model_keys, asdict(config.evaluation), REPORT_VERSION)
    if world.report.is_file():
        cached = json.loads(world.report.read_text())
        if cached.get("key") == report_key:
            log(f"[prepare] everything is up to date in {world.root}")
            return cached
    started = time.perf_counter()
    report: dict = {"key": report_key, "workdir": str(world.root), "data": str(config.data.path or world.data)}
    for name, directory in (("target", world.target), ("gold_standard", world.gold_standard)):
        log(f"[prepare] scoring the {name.replace('_', ' ')}")
        model, model_tokenizer = _load_local(directory)
        report[name] = memorisation_report(model, model_tokenizer, lume, world.multiple_choice, config, progress)
    timings["report"] = time.perf_counter() - started
    report["timings"] = timings
    report["environment"] = describe_environment(model)
    atomic_write_json(world.report, report)
    return report


def _load_local(directory: Path):
    from utils.models.loading import load_model_and_tokenizer

    return load_model_and_tokenizer(str(directory))


def _save_stage(model, tokenizer, directory: Path, key: str, result, card: str) -> None:
    from utils.models.loading import save_model

    save_model(model, tokenizer, directory, card)
    atomic_write_json(directory / STAGE_FILE, {"key": key, "seconds": result.seconds, "steps": result.steps,
                                              "tokens": result.tokens, "final_loss": result.mean_loss})


@torch.inference_mode()
def mean_nlls(model, tokenizer, items, batch_size: int) -> dict[str, float]:
    """Means over items, from one forward pass each: `output_nll`, the mean token NLL of the answer
    given the prompt, and `text_nll`, that of the whole text (the two levels `method.forget_loss_ceiling:
    gold_standard` reads, for the answer and the document scope)."""
    from methods.engine.trainer import text_labels, token_nll_from_logits
    from utils.data.tokenization import collate, encode_item

    examples = [encode_item(tokenizer, item, "output") for item in items]
    device = next(model.parameters()).device
    totals = {"output_nll": 0.0, "text_nll": 0.0}
    for start in range(0, len(examples), batch_size):
        batch = collate(examples[start:start + batch_size], tokenizer.pad_token_id)
        batch = {k: v.to(device) for k, v in batch.items()}
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        totals["output_nll"] += float(token_nll_from_logits(logits, batch["labels"])[0].sum())
        totals["text_nll"] += float(token_nll_from_logits(logits, text_labels(batch))[0].sum())
    return {name: total / len(examples) for name, total in totals.items()}


@torch.inference_mode()
def memorisation_report(model, tokenizer, lume: LumeData, multiple_choice: Path, config: Config,
                        progress: bool) -> dict:
    """Mean regurgitation / knowledge per split (official metrics, greedy) and utility on the synthetic set."""
    from utils.evaluation.evaluate import split_means
    from utils.evaluation.mmlu import evaluate_utility

    out: dict = {}
    settings = config.evaluation
    for split in ("forget", "retain"):
        items = lume.split_items(split)
        out[split] = {**split_means(model, tokenizer, items, settings.max_new_tokens, settings.batch_size,
                                    settings.clean_up_tokenization_spaces, progress),
                      # The gold standard's levels are natural `method.forget_loss_ceiling`s.
                      **mean_nlls(model, tokenizer, items, config.evaluation.nll_batch_size)}
    utility = evaluate_utility(model, tokenizer, f"synthetic:{multiple_choice}", progress=progress)
    out["utility"] = utility["score"] if utility else None
    out["utility_benchmark"] = utility["benchmark"] if utility else None
    return out
