"""Models: loading and saving checkpoints and tokenizers, the tiny model of the embedded default
(`loading`), and what part of a model a run may train (`adapters`: LoRA, last-k layers, or all)."""
