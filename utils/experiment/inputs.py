"""The run's inputs: a gold-standard ceiling resolved to its number, the items as training examples and the
phases the method builds from them. Shared by a run, its dry run (`schedule`), `unlearn doctor` and the
relearning attack, so each sees the examples and the schedule a run trains.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from types import ModuleType

from methods.engine.trainer import Phase
from methods.registry import check_loss_reduction
from utils.config import Config
from utils.data.lume import Item, LumeData
from utils.data.tokenization import Example, encode_item
from utils.errors import UserError


def gold_standard_forget(workdir, key: str, needed_by: str, alternative: str = "") -> float:
    """The gold standard's forget-set `key` (output_nll: its answer NLL; text_nll: its whole-text NLL) that
    `unlearn prepare` measured into <workdir>/prepare_report.json; a missing or unreadable report is one line."""
    report_path = Path(workdir) / "prepare_report.json"
    try:
        return float(json.loads(report_path.read_text())["gold_standard"]["forget"][key])
    except (OSError, KeyError, TypeError, ValueError):
        raise UserError(f"{needed_by} needs {report_path} with the gold standard's forget {key} "
                        f"(run `unlearn prepare`){alternative}") from None


def resolve_forget_loss_ceiling(config: Config) -> Config:
    """Turn `forget_loss_ceiling: gold_standard` into the number `unlearn prepare` measured.

    The gold standard never saw the forget set, so its NLL on the forget answers is the level an
    unlearned model should reach; ascending past it is what drives MIA AUC below 0.5 (over-forgetting).
    """
    if getattr(config.method, "forget_loss_ceiling", None) != "gold_standard":  # (only some methods have one)
        return config
    # The answer-level ceiling reads the gold standard's answer NLL; the document-level one its whole-text NLL.
    key = "text_nll" if config.method.forget_loss_ceiling_scope == "document" else "output_nll"
    level = gold_standard_forget(config.workdir, key, "method.forget_loss_ceiling=gold_standard", ", or give a number")
    return dataclasses.replace(config, method=dataclasses.replace(config.method, forget_loss_ceiling=float(level)))


def appends_eos(config: Config) -> bool:
    """Whether a run's examples end in EOS: `training.append_eos`, else the seed's choice (the gold standard
    only; unlearning examples end with their answer)."""
    if config.training.append_eos is not None:
        return config.training.append_eos
    return config.method.name == "gold_standard"


def example_encoder(tokenizer, config: Config):
    """encode(item, role, answer=None) -> Example: the item as a run trains on it, `answer` (when given)
    replacing its own. Without a tokenizer (a dry run that has none locally): a token-less stand-in, which
    gives the same phases and step counts (those never read tokens)."""
    def encode(item: Item, role: str, answer: str | None = None) -> Example:
        if tokenizer is None:
            return Example(input_ids=[], labels=[], item_id=item.id, role=role)
        if answer is not None:
            item = dataclasses.replace(item, output=answer)
        return encode_item(tokenizer, item, "output", config.training.max_length, role=role,
                           add_eos=appends_eos(config))

    return encode


def training_examples(items: list[Item], role: str, tokenizer, config: Config) -> list[Example]:
    """The items as training examples (stand-ins without a tokenizer, see `example_encoder`)."""
    encode = example_encoder(tokenizer, config)
    return [encode(item, role) for item in items]


def build_run_phases(method: ModuleType, config: Config, lume: LumeData, tokenizer) -> list[Phase]:
    """The phases a run of `config` trains, built by the method itself: shared by a run and
    `unlearn run --dry-run`, so the schedule a dry run shows is the one a run trains. A method with its
    own `make_examples` (methods/registry.py) makes its examples from the items."""
    training = config.training
    check_loss_reduction(config.method, training)
    make_examples = getattr(method, "make_examples", None)
    if make_examples is None:
        forget = training_examples(lume.forget, "forget", tokenizer, config)
        retain = training_examples(lume.retain, "retain", tokenizer, config)
    else:
        encode = example_encoder(tokenizer, config)
        forget = make_examples(lume.forget, "forget", encode, config.method, training.seed)
        retain = make_examples(lume.retain, "retain", encode, config.method, training.seed)
    return method.build_phases(forget, retain, config.method, training, training.seed)
