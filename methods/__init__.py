"""Unlearning and fine-tuning methods, all run by the one training loop in `methods.engine.trainer`."""
