"""The engine every method runs on: the training loop (`trainer`), the losses and the reference model
(`losses`), the phase building blocks the methods share (`phases`), the settings classes they extend
(`settings`) and plain fine-tuning (`finetune`)."""
