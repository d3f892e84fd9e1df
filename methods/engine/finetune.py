"""Plain fine-tuning on the shared loop: pre-training the tiny model, memorising the target, and the
gold standard (the model trained on the retain set only, the reference for perfect unlearning)."""

from __future__ import annotations

from pathlib import Path

from methods.engine.trainer import Phase, PhaseResult, Trainer, nll_loss
from utils.config import AdapterConfig, TrainingConfig
from utils.data.tokenization import Example
from utils.models.adapters import apply_adapter, finalise
from utils.seeding import seed_everything


def finetune(model, tokenizer, examples: list[Example], training: TrainingConfig, adapter: AdapterConfig,
             name: str = "finetune", log_path: str | Path | None = None, progress: bool = True,
             accelerator=None) -> tuple[object, PhaseResult]:
    """Train on `examples` (shuffled each epoch) with NLL; returns the final (merged) model and stats."""
    seed_everything(training.seed)  # LoRA's initial matrices come from the global generator
    model = apply_adapter(model, adapter)
    trainer = Trainer(model, tokenizer, training, nll_loss, accelerator=accelerator, log_path=log_path,
                      progress=progress)
    result = trainer.train_phase(Phase(name=name, examples=examples, epochs=training.epochs, shuffle=True))
    trained = finalise(trainer.plain_model(), adapter)
    trained.eval()
    return trained, result
