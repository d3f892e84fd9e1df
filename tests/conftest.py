"""Shared fixtures: paths to ../shared, a tiny tokenizer/model pair that builds in a second, and the
small prepared world (data, tokenizer, target, gold standard) the command tests share."""

from __future__ import annotations

import contextlib
import copy
import random
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
REAL_DATA = SHARED / "semeval25-unlearning-data"

torch.set_num_threads(max(1, min(2, torch.get_num_threads())))

SENTENCES = [
    "The capital of Varnia is Lostrel, a city on the river Quen.",
    "Mira painted the old lighthouse blue every spring before the storms.",
    "Tobias Kell was born on 1987-03-12 and lives at 14 Harbour Road, Kelso.",
    "His phone number is 5551234567 and his e-mail is tobias.kell@example.com.",
    "The orange fox of the northern hills sleeps through the winter.",
    "Question: Who painted the lighthouse? Answer: Mira.",
]


@pytest.fixture(scope="session")
def real_data_dir() -> Path:
    if not (REAL_DATA / "data").is_dir():
        pytest.skip("the real LUME validation files are not in ../shared")
    return REAL_DATA


@pytest.fixture(scope="session")
def tiny_tokenizer():
    from utils.models.loading import train_tokenizer

    return train_tokenizer(SENTENCES * 4, vocab_size=400)


@pytest.fixture()
def tiny_model(tiny_tokenizer):
    from utils.models.loading import build_tiny_model

    return build_tiny_model(tiny_tokenizer, hidden_size=32, num_layers=2, num_heads=2, intermediate_size=64,
                            max_position_embeddings=128, seed=0)


# Random word sentences and a tiny model trained on a few of them for 30 steps, so its logits are far from
# uniform: the evaluation tests (generation, MIA, utility) build their worlds from these.
WORDS = ["the", "cat", "dog", "sat", "on", "a", "mat", "red", "blue", "green", "house", "river", "tree",
         "moon", "sun", "star", "bird", "fish", "runs", "jumps", "sleeps", "quickly", "slowly", "under",
         "over", "near", "big", "small", "old", "young"]


def random_sentences(n: int, seed: int = 0, words: list[str] = WORDS) -> list[str]:
    rng = random.Random(seed)
    return [" ".join(rng.choice(words) for _ in range(rng.randint(4, 12))) + "." for _ in range(n)]


def briefly_trained_model(sentences: list[str], trained_on: int = 8, end_with_eos: bool = False):
    """(a tiny Olmo2 trained for 30 steps on the first `trained_on` sentences, its tokenizer); with
    `end_with_eos` each training sentence is followed by EOS (so the model learns to stop)."""
    from utils.models.loading import build_tiny_model, train_tokenizer

    torch.set_num_threads(1)
    tokenizer = train_tokenizer(sentences, 300)
    model = build_tiny_model(tokenizer, hidden_size=32, num_layers=2, num_heads=2, intermediate_size=64)
    optimiser = torch.optim.AdamW(model.parameters(), lr=1e-2)
    eos = [tokenizer.eos_token_id] if end_with_eos else []
    batch = [tokenizer(s)["input_ids"] + eos for s in sentences[:trained_on]]
    width = max(map(len, batch))
    input_ids = torch.tensor([b + [tokenizer.pad_token_id] * (width - len(b)) for b in batch])
    labels = torch.tensor([b + [-100] * (width - len(b)) for b in batch])
    for _ in range(30):
        loss = model(input_ids=input_ids, attention_mask=(labels != -100).long(), labels=labels).loss
        loss.backward()
        optimiser.step()
        optimiser.zero_grad()
    model.eval()
    return model, tokenizer


# The sentences as (prompt, answer) pairs, 3 to forget and 3 to retain, and a tiny model trained on all six
# for a few seconds so that their NLLs mean something: the methods' and losses' tests share them.


def pair(tokenizer, sentence, role):
    from utils.data.tokenization import encode_pair

    words = sentence.split()
    half = len(words) // 2
    return encode_pair(tokenizer, " ".join(words[:half]), " ".join(words[half:]), item_id=sentence[:12], role=role)


@pytest.fixture(scope="module")
def data(tiny_tokenizer):
    forget = [pair(tiny_tokenizer, s, "forget") for s in SENTENCES[:3]]
    retain = [pair(tiny_tokenizer, s, "retain") for s in SENTENCES[3:]]
    return forget, retain


@pytest.fixture(scope="module")
def trained(tiny_tokenizer, data):
    from methods.engine.trainer import Phase, Trainer, nll_loss
    from utils.config import TrainingConfig
    from utils.models.loading import build_tiny_model

    torch.manual_seed(0)
    model = build_tiny_model(tiny_tokenizer, hidden_size=32, num_layers=2, num_heads=2, intermediate_size=64,
                             max_position_embeddings=128, seed=0)
    forget, retain = data
    config = TrainingConfig(epochs=45, learning_rate=1e-2, batch_size=6, lr_schedule="cosine", warmup_steps=5)
    Trainer(model, tiny_tokenizer, config, nll_loss, progress=False).train_phase(
        Phase("fit", forget + retain, epochs=45))
    model.eval()
    return model


@pytest.fixture()
def model(trained):
    """A fresh copy of the fitted model for a test to change."""
    return copy.deepcopy(trained)


@contextlib.contextmanager
def torch_threads(count: int):
    """Run a block with `count` intra-op threads. The tiny models' matrices are too small to gain from
    threads, and on a shared 2-core machine a second thread makes every step many times slower."""
    previous = torch.get_num_threads()
    torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


@pytest.fixture(scope="module")
def one_thread():
    with torch_threads(1):
        yield


# The smallest world in which unlearning still means something: 2 documents per task and split
# (20 forget and 20 retain items), a 2-layer OLMo of width 64, one pass of pre-training and a target
# trained until it has memorised its forget set with a wide margin (regurgitation and QA 1.0, answer NLL
# ~0.01), so tests never hang on a training run landing just so on one stack's numerics. Generations run
# to 80 tokens: the longest sentence-completion answer is 69 tokens, and a shorter cap would bound
# ROUGE-L recall below 1 for a perfect memoriser.
SMALL_WORLD_OVERRIDES = [
    "synthetic.documents_per_task=2", "synthetic.general_facts=8", "synthetic.mia_nonmembers=4",
    "model.tiny.vocab_size=600", "model.tiny.hidden_size=64", "model.tiny.num_layers=2", "model.tiny.num_heads=2",
    "model.tiny.intermediate_size=256", "model.tiny.max_position_embeddings=256",
    "prepare.pretrain.epochs=1", "prepare.pretrain.learning_rate=5e-3", "prepare.pretrain.warmup_steps=3",
    "prepare.target.epochs=60", "prepare.target.learning_rate=5e-3", "prepare.target.warmup_steps=5",
    "prepare.gold_standard.epochs=60", "prepare.gold_standard.learning_rate=5e-3",
    "prepare.gold_standard.warmup_steps=5",
    "evaluation.max_new_tokens=80", "evaluation.per_phase_max_new_tokens=16", "evaluation.per_phase_subset=1",
]


@dataclass(frozen=True)
class SmallWorld:
    root: Path
    overrides: list[str]  # what built it; add `workdir=<root>` to point a command at it
    report: dict

    @property
    def target(self) -> Path:
        return self.root / "target"

    @property
    def gold_standard(self) -> Path:
        return self.root / "gold_standard"

    @property
    def data(self) -> Path:
        return self.root / "data"

    def config(self, *extra: str):
        from methods.registry import typed
        from utils.config import load_config

        return typed(load_config(None, [*self.overrides, f"workdir={self.root}", *extra]))


@pytest.fixture(scope="session")
def small_world(tmp_path_factory) -> SmallWorld:
    """`unlearn prepare` on the small config, built once per session (about 20 s on one core)."""
    from utils.config import load_config
    from utils.experiment.world import prepare

    root = tmp_path_factory.mktemp("small_world")
    with torch_threads(1):
        report = prepare(load_config(None, SMALL_WORLD_OVERRIDES), out=root, progress=False, log=lambda _: None)
    return SmallWorld(root=root, overrides=list(SMALL_WORLD_OVERRIDES), report=report)


# The hostile-input suite reports its own count ("N of M handled cleanly") at the end of the run.
HOSTILE_CASE = "test_hostile_inputs.py::test_hostile_input["
hostile_outcomes: dict[str, bool] = {}


def pytest_runtest_logreport(report) -> None:
    if HOSTILE_CASE in report.nodeid and (report.when == "call" or report.failed):
        hostile_outcomes[report.nodeid] = hostile_outcomes.get(report.nodeid, True) and report.passed


def pytest_terminal_summary(terminalreporter) -> None:
    if hostile_outcomes:
        handled = sum(hostile_outcomes.values())
        terminalreporter.write_line(f"hostile inputs: {handled} of {len(hostile_outcomes)} handled cleanly")
