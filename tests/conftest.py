"""Shared fixtures: paths to ../shared and a tiny tokenizer/model pair that builds in a second."""

from __future__ import annotations

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
    from utils.models import train_tokenizer

    return train_tokenizer(SENTENCES * 4, vocab_size=400)


@pytest.fixture()
def tiny_model(tiny_tokenizer):
    from utils.models import build_tiny_model

    return build_tiny_model(tiny_tokenizer, hidden_size=32, num_layers=2, num_heads=2, intermediate_size=64,
                            max_position_embeddings=128, seed=0)
