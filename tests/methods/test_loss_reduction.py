"""`training.loss_reduction`: `example` (the mean over the global batch of weight x each example's mean token
loss; the default, what every run did before the key existed) and `token` (the HF Trainer's: the sum over every
answer token of the global batch of weight x its loss, over the number of those tokens), the same whatever the
micro-batches and processes; the sequence-level losses refuse `token` in one line."""

from __future__ import annotations

import contextlib
import copy
import json
import math
from types import SimpleNamespace

import pytest
import torch

from methods.engine.phases import tagged
from methods.engine.trainer import LossOutput, Phase, Trainer, nll_per_example, token_nll_from_logits
from methods.registry import check_loss_reduction, typed_settings
from utils.config import MethodSection, TrainingConfig, load_config
from utils.data.tokenization import Example
from utils.errors import UserError

from ..conftest import REPO, SENTENCES, pair
from .helpers import term_loss

pytestmark = pytest.mark.usefixtures("one_thread")

LN2, LN3, LN6 = math.log(2), math.log(3), math.log(6)


class FixedLogits(torch.nn.Module):
    """The same logits at every position, log(1, 2, 3): token 0 has NLL ln 6, token 1 ln 3, token 2 ln 2."""

    def __init__(self):
        super().__init__()
        self.bias = torch.nn.Parameter(torch.log(torch.tensor([1.0, 2.0, 3.0])))

    def forward(self, input_ids, attention_mask=None):
        return SimpleNamespace(logits=self.bias.expand(*input_ids.shape, 3))


def hand_batch() -> list[Example]:
    """SUGD-shaped: one forget example (ascent, weight 1) and two retain ones (weight 0.5) whose answers hold
    2, 3 and 1 scored tokens (a label counts from the second position on)."""
    return [Example([1, 1, 1], [-100, 0, 2], role="forget", weight=1.0),
            Example([1, 1, 1, 1, 1], [-100, -100, 1, 1, 2], role="retain", weight=0.5),
            Example([1, 1], [-100, 2], role="retain", weight=0.5)]


# token: (-(ln6 + ln2) + 0.5 * (ln3 + ln3 + ln2) + 0.5 * ln2) / 6 tokens = -ln2 / 6
TOKEN_LOSS = -LN2 / 6
# example: (-(ln6 + ln2) / 2 + 0.5 * (2 ln3 + ln2) / 3 + 0.5 * ln2) / 3 examples
EXAMPLE_LOSS = (-(LN6 + LN2) / 2 + 0.5 * (2 * LN3 + LN2) / 3 + 0.5 * LN2) / 3


def first_step_loss(model, training: TrainingConfig, batch: list[Example], tmp_path, accelerator=None) -> float:
    log = tmp_path / f"log-{id(training)}.jsonl"
    trainer = Trainer(model, SimpleNamespace(pad_token_id=0), training, term_loss("ascent", "nll"),
                      accelerator=accelerator, log_path=log, progress=False)
    trainer.train_phase(Phase("p", batch, epochs=1))
    return json.loads(log.read_text().splitlines()[0])["loss"]


@pytest.mark.parametrize("split", [{}, {"gradient_accumulation_steps": 3}, {"max_micro_batch_tokens": 4}],
                         ids=["one-micro-batch", "accumulation", "token-budget"])
def test_the_token_loss_is_the_hand_computed_token_mean(tmp_path, split):
    assert abs(TOKEN_LOSS - EXAMPLE_LOSS) > 0.02  # the two reductions differ on this batch
    for reduction, expected in (("token", TOKEN_LOSS), ("example", EXAMPLE_LOSS)):
        training = TrainingConfig(batch_size=3, learning_rate=1e-3, loss_reduction=reduction, **split)
        assert first_step_loss(FixedLogits(), training, hand_batch(), tmp_path) == pytest.approx(expected, abs=1e-6)


class OneRankOf:
    """What the Trainer asks of an accelerator, answered as rank `rank` of `world` DDP processes would, except
    that gradients are not averaged: the test averages the ranks' gradients itself, as DDP would."""

    device = torch.device("cpu")
    is_main_process = True

    def __init__(self, rank: int, world: int):
        self.process_index, self.num_processes = rank, world

    def prepare_model(self, model):
        return model

    def prepare_optimizer(self, optimizer):
        return optimizer

    def unwrap_model(self, model):
        return model

    def backward(self, loss):
        loss.backward()

    def autocast(self):
        return contextlib.nullcontext()

    def no_sync(self, model):
        return contextlib.nullcontext()

    def clip_grad_norm_(self, parameters, max_norm):
        return torch.nn.utils.clip_grad_norm_(parameters, max_norm)

    def reduce(self, tensor, reduction="sum"):
        return tensor


def step_gradient(model, batch: list[Example], training: TrainingConfig, pad_id: int, accelerator=None) -> dict:
    """The gradient of the Trainer's first optimiser step, summed over its micro-batches (hooks see every one)."""
    grads: dict[str, torch.Tensor] = {}
    for name, parameter in model.named_parameters():
        def keep(grad, name=name):
            grads[name] = grads.get(name, 0) + grad.detach().clone()
        parameter.register_hook(keep)
    trainer = Trainer(model, SimpleNamespace(pad_token_id=pad_id), training, term_loss("ascent", "nll"),
                      accelerator=accelerator, progress=False)
    trainer.train_phase(Phase("p", batch, epochs=1))
    return grads


def reference_gradient(model, batch: list[Example], reduction: str) -> dict:
    """The gradient of the reduction's definition, each example on its own (no padding, no micro-batches)."""
    model = copy.deepcopy(model)
    terms, tokens = [], 0
    for example in batch:
        logits = model(input_ids=torch.tensor([example.input_ids])).logits
        mean, summed, count = token_nll_from_logits(logits, torch.tensor([example.labels]))
        sign = -1.0 if example.role == "forget" else 1.0
        terms.append(sign * example.weight * (summed if reduction == "token" else mean))
        tokens += int(count)
    total = torch.cat(terms).sum() / (tokens if reduction == "token" else len(batch))
    total.backward()
    return {name: p.grad for name, p in model.named_parameters()}


def sugd_batch(tokenizer) -> list[Example]:
    forget = [tagged(pair(tokenizer, s, "forget"), "forget", 1.0) for s in SENTENCES[:2]]
    retain = [tagged(pair(tokenizer, s, "retain"), "retain", 0.5) for s in SENTENCES[2:5]]
    return [forget[0], *retain[:2], forget[1], retain[2]]


def test_token_reduction_gives_one_gradient_whatever_the_micro_batches_and_processes(tiny_model, tiny_tokenizer):
    batch = sugd_batch(tiny_tokenizer)
    counts = [sum(label != -100 for label in e.labels[1:]) for e in batch]
    assert len(set(counts)) > 2  # answers of different lengths: the two reductions weigh them differently
    pad = tiny_tokenizer.pad_token_id
    expected = reference_gradient(tiny_model, batch, "token")
    budget = 2 * max(len(e.input_ids) for e in batch)
    for split in ({}, {"gradient_accumulation_steps": 3}, {"max_micro_batch_tokens": budget}):
        training = TrainingConfig(batch_size=5, learning_rate=1e-3, loss_reduction="token", **split)
        got = step_gradient(copy.deepcopy(tiny_model), batch, training, pad)
        for name, grad in expected.items():
            torch.testing.assert_close(got[name], grad, rtol=1e-5, atol=1e-7, msg=f"{split}: {name}")
    # Two DDP processes, each with its share of the global batch (and its own micro-batches): DDP's average of
    # their gradients is the one-process gradient, so each divides by the global batch's answer tokens.
    for split in ({}, {"max_micro_batch_tokens": budget}):
        training = TrainingConfig(batch_size=5, learning_rate=1e-3, loss_reduction="token", **split)
        ranks = [step_gradient(copy.deepcopy(tiny_model), batch, training, pad, OneRankOf(rank, 2))
                 for rank in range(2)]
        for name, grad in expected.items():
            torch.testing.assert_close((ranks[0][name] + ranks[1][name]) / 2, grad, rtol=1e-5, atol=1e-7,
                                       msg=f"2 processes {split}: {name}")


def test_example_reduction_is_the_per_example_mean_and_stays_the_default(tiny_model, tiny_tokenizer):
    batch = sugd_batch(tiny_tokenizer)
    pad = tiny_tokenizer.pad_token_id
    got = step_gradient(copy.deepcopy(tiny_model), batch, TrainingConfig(batch_size=5, learning_rate=1e-3), pad)
    example, token = reference_gradient(tiny_model, batch, "example"), reference_gradient(tiny_model, batch, "token")
    for name, grad in example.items():
        torch.testing.assert_close(got[name], grad, rtol=1e-5, atol=1e-7, msg=name)
    assert not all(torch.allclose(got[name], token[name], rtol=1e-3, atol=1e-6) for name in token)
    # The embedded default and the tiny configs keep the reduction every earlier run used.
    assert TrainingConfig().loss_reduction == "example"
    for path in sorted((REPO / "configs").glob("*.yaml")):
        assert load_config(path).training.loss_reduction == "example", path


def test_the_seed_configs_take_the_seeds_reductions_and_numerics():
    for size in ("olmo-1b", "olmo-7b"):
        folder = REPO / "configs" / size
        for name, reduction in (("agad", "token"), ("gold_standard", "token"), ("sugd", "example")):
            assert load_config(folder / f"{name}.yaml").training.loss_reduction == reduction, (size, name)
        for name in ("agad", "sugd"):
            assert load_config(folder / f"{name}.yaml").training.master_weights == "none", (size, name)
        assert load_config(folder / "sugd_master_weights.yaml").training.master_weights == "auto"
        lora = load_config(folder / "sugd_lora.yaml").adapter
        assert (lora.kind, lora.lora_rank, lora.lora_alpha) == ("lora", 16, 64)  # the seed's sequential_args.json
    assert load_config(REPO / "configs" / "olmo-1b" / "sugd_ceiling.yaml").training.master_weights == "none"
    # the baselines are not the seed's: they keep fp32 copies and the per-example mean
    ga = load_config(REPO / "configs" / "olmo-1b" / "ga.yaml").training
    assert (ga.master_weights, ga.loss_reduction) == ("auto", "example")


def test_sequence_level_losses_refuse_token_in_one_line():
    from methods.registry import METHODS

    token = TrainingConfig(loss_reduction="token")
    refused = set()
    for name, module in METHODS.items():
        try:
            check_loss_reduction(module.Settings(), token)
        except UserError as error:
            assert "training.loss_reduction" in str(error) and "\n" not in str(error)
            refused.add(name)
        check_loss_reduction(module.Settings(), TrainingConfig())  # example: any loss
    assert refused == {"idk_dpo", "rmu"}
    # The schedules over loss terms ask their terms: NPO and SimNPO are one value per sequence.
    for forget, refuses in (("ascent", False), ("npo", True), ("simnpo", True), ("wga", False), ("undial", False)):
        for name, retain in (("ga", None), ("gd", "nll"), ("gd", "kl"), ("sugd", "none")):
            options = {"forget": forget, **({"retain": retain} if retain else {})}
            settings = typed_settings(MethodSection(name=name, options=options))
            if refuses:
                with pytest.raises(UserError, match=f"the {forget} loss is one value per sequence"):
                    check_loss_reduction(settings, token)
            else:
                check_loss_reduction(settings, token)


def test_the_trainer_refuses_token_for_a_loss_without_token_counts(tiny_model, tiny_tokenizer):
    def sequence_loss(model, batch):
        nll = nll_per_example(model, batch)
        return LossOutput(per_example=nll * batch["weight"], nll=nll)  # no token counts

    trainer = Trainer(tiny_model, tiny_tokenizer, TrainingConfig(batch_size=2, loss_reduction="token"), sequence_loss,
                      progress=False)
    with pytest.raises(UserError, match="training.loss_reduction: token needs a loss averaged over answer tokens"):
        trainer.train_phase(Phase("p", sugd_batch(tiny_tokenizer), epochs=1))


def test_a_run_saved_before_the_key_resumes_as_example(tmp_path):
    import yaml

    from utils.config import save_config, to_dict
    from utils.experiment.run import check_resumable
    from utils.experiment.world import training_key

    config = load_config(None, [f"workdir={tmp_path}"])
    save_config(config, tmp_path / "config.yaml")
    saved = to_dict(config)
    del saved["training"]["loss_reduction"], saved["training"]["gradient_checkpointing"]
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(saved))
    check_resumable(config, tmp_path)
    # gradient checkpointing changes memory, not the weights: a resume may turn it on
    check_resumable(load_config(None, [f"workdir={tmp_path}", "training.gradient_checkpointing=true"]), tmp_path)
    with pytest.raises(UserError, match=r"different training\.loss_reduction than this config"):
        check_resumable(load_config(None, [f"workdir={tmp_path}", "training.loss_reduction=token"]), tmp_path)
    # A cached world's key does not change for the new keys at their neutral values.
    key = training_key(TrainingConfig())
    assert "loss_reduction" not in key and "gradient_checkpointing" not in key
    assert training_key(TrainingConfig(loss_reduction="token"))["loss_reduction"] == "token"
