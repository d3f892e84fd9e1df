"""Adding a loss term takes two project files: the term's module (here written to a temporary folder, as
`methods/losses/clipped.py` would be) and its line in `methods/losses/__init__.py`'s list (here the call that
line makes, `register_term`). Nothing else changes: the config names it, the registry parses and range-checks
its knob, the engine combines it and a run trains on it."""

import re
import textwrap
from importlib import import_module

import pytest
import torch

from methods.engine.trainer import Phase, Trainer, nll_per_example
from methods.losses import TERMS, register_term, unregister_term
from methods.registry import get_method, make_loss, prepare_reference, typed
from utils.config import AdapterConfig, load_config
from utils.data.tokenization import Example, collate
from utils.errors import UserError
from utils.models.adapters import apply_adapter

from ..conftest import REPO, SENTENCES

# The files a contributor adds or edits outside tests to add a term: its module and one registry line.
FILES_OUTSIDE_TESTS = ("methods/losses/clipped.py", "methods/losses/__init__.py")

MODULE = '''
"""Ascent clipped at a level: -min(mean token NLL, clip)."""

from dataclasses import dataclass, field
from typing import ClassVar

from utils.config import POSITIVE, knob


@dataclass
class Clipped:
    loss: str = field(default="clipped", init=False)
    clip: float = field(default=3.0, metadata=knob(POSITIVE, "the NLL above which ascent stops pulling"))
    role: ClassVar[str] = "forget"
    reference: ClassVar[str | None] = None
    token_mean: ClassVar[bool] = False

    def per_example(self, view, rows):
        return -view.mean_nll.clamp(max=self.clip)
'''


def test_the_registry_is_one_line_per_term():
    source = (REPO / "methods" / "losses" / "__init__.py").read_text()
    lines = re.findall(r'^    "methods\.losses\.(\w+):(\w+)",$', source, flags=re.MULTILINE)
    assert len(lines) == len(TERMS) == 7
    assert {getattr(import_module(f"methods.losses.{module}"), name)().loss for module, name in lines} == set(TERMS)


def test_a_new_term_trains_end_to_end_from_a_config(tiny_model, tiny_tokenizer, tmp_path, monkeypatch):
    assert len(FILES_OUTSIDE_TESTS) <= 2
    (tmp_path / "clipped.py").write_text(textwrap.dedent(MODULE))
    monkeypatch.syspath_prepend(str(tmp_path))
    register_term(import_module("clipped").Clipped)  # the one registry line
    try:
        forget = []
        for i, text in enumerate(SENTENCES[:4]):
            ids = tiny_tokenizer(text)["input_ids"]
            forget.append(Example(ids, [-100] * 3 + ids[3:], f"F{i}"))
        model = apply_adapter(tiny_model, AdapterConfig(kind="full"))
        model.train()
        with torch.no_grad():
            nll = nll_per_example(model, collate(forget, tiny_tokenizer.pad_token_id))
        clip = float(nll.median())
        config_file = tmp_path / "clipped.yaml"
        config_file.write_text(f"method:\n  name: ga\n  forget: {{loss: clipped, clip: {clip}}}\n"
                               "training:\n  epochs: 1\n  batch_size: 4\n  learning_rate: 1.0e-3\n")
        config = typed(load_config(config_file))
        assert config.method.forget.clip == clip
        with pytest.raises(UserError, match=r"^config: method\.forget\.clip must be a finite number > 0, got -1\.0$"):
            typed(load_config(config_file, ["method.forget.clip=-1"]))

        method = get_method(config.method.name)
        phases = method.build_phases(forget, [], config.method, config.training, 0)
        reference = prepare_reference(config.method, model, "full", phases, tiny_tokenizer)
        assert reference is None  # the term reads no reference
        loss_fn = make_loss(config.method, reference)
        trainer = Trainer(model, tiny_tokenizer, config.training, loss_fn, progress=False)
        result = trainer.train_phase(Phase("clipped", phases[0].examples, epochs=1, shuffle=False), 0)
        # One step over the four forget examples: the mean of -min(NLL, clip), what the term defines.
        assert result.steps == 1
        assert result.mean_loss == pytest.approx(float((-nll.clamp(max=clip)).mean()), rel=1e-5)
        assert (nll > clip).any() and (nll < clip).any()  # the clip bites on some examples, not all
        with torch.no_grad():
            after = nll_per_example(trainer.unwrapped_model, collate(forget, tiny_tokenizer.pad_token_id))
        assert float(after[nll < clip].mean()) > float(nll[nll < clip].mean())  # ascent where not clipped
    finally:
        unregister_term("clipped")
    assert "clipped" not in TERMS


def test_a_term_that_does_not_follow_the_protocol_is_refused(tmp_path, monkeypatch):
    (tmp_path / "misnamed.py").write_text(textwrap.dedent(MODULE).replace("def per_example", "def forward"))
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(TypeError, match="does not follow methods.engine.losses.LossTerm"):
        register_term(import_module("misnamed").Clipped)
    assert "clipped" not in TERMS
