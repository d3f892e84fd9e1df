"""Shared building blocks: data, models, metrics, evaluation, configuration and the CLI."""
