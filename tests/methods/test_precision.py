"""fp32 master weights: a bf16 last-k run at a small learning rate moves its weights the way an fp32 run does,
where stepping the bf16 weights in place leaves them where they were."""

import copy

import pytest
import torch

from methods.engine.precision import MasterWeights, wants_master_weights
from methods.engine.trainer import Phase, Trainer, nll_loss
from utils.config import AdapterConfig, TrainingConfig
from utils.data.tokenization import encode_text
from utils.models.adapters import apply_adapter

from ..conftest import SENTENCES


def trained_delta(model, tokenizer, master_weights: str) -> torch.Tensor:
    """The change of the last layer's weights (as fp32) after 21 AdamW steps at lr 1e-5."""
    model = apply_adapter(model, AdapterConfig(kind="last_k", last_k=1))
    before = {n: p.detach().float().clone() for n, p in model.named_parameters() if p.requires_grad}
    config = TrainingConfig(batch_size=2, learning_rate=1e-5, lr_schedule="constant", max_grad_norm=0.0,
                            master_weights=master_weights)
    data = [encode_text(tokenizer, s) for s in SENTENCES]
    trainer = Trainer(model, tokenizer, config, nll_loss, progress=False)
    trainer.train_phase(Phase("small steps", data, epochs=7))
    after = {n: p.detach().float() for n, p in trainer.unwrapped_model.named_parameters() if p.requires_grad}
    return torch.cat([(after[n] - before[n]).flatten() for n in before])


def test_bf16_weights_follow_the_fp32_run_only_with_master_weights(tiny_model, tiny_tokenizer):
    fp32 = trained_delta(copy.deepcopy(tiny_model), tiny_tokenizer, "auto")
    bf16_model = tiny_model.to(torch.bfloat16)
    in_place = trained_delta(copy.deepcopy(bf16_model), tiny_tokenizer, "none")
    mastered = trained_delta(bf16_model, tiny_tokenizer, "auto")

    assert (fp32 != 0).float().mean() > 0.9  # the fp32 run moves nearly every weight
    cosine = torch.nn.functional.cosine_similarity
    # In place, an update of ~1e-5 is below half a bf16 step for most weights (all but those near zero): most
    # of them do not move, and what moves points elsewhere than the fp32 run (measured: 16% moved, cosine 0.34).
    assert (in_place != 0).float().mean() < 0.3, float((in_place != 0).float().mean())
    assert cosine(in_place, fp32, dim=0) < 0.6
    # With fp32 copies the updates add up and the rounded weights move as the fp32 run's do (79%, 0.95).
    assert (mastered != 0).float().mean() > 0.6, float((mastered != 0).float().mean())
    assert cosine(mastered, fp32, dim=0) > 0.85
    assert mastered.norm() / fp32.norm() == pytest.approx(1.0, abs=0.2)


def test_master_copies_only_where_the_weights_are_low_precision():
    fp32 = torch.nn.Parameter(torch.zeros(2))
    bf16 = torch.nn.Parameter(torch.zeros(2, dtype=torch.bfloat16))
    master = MasterWeights([fp32, bf16])
    assert master.parameters[0] is fp32 and master.parameters[1].dtype == torch.float32

    assert wants_master_weights("auto", [bf16]) and not wants_master_weights("auto", [fp32])
    # "fp32" is auto (fp32 weights need no copy); "none" refuses.
    assert wants_master_weights("fp32", [bf16]) and not wants_master_weights("none", [bf16])
