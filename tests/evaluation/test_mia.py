"""Batched document losses equal the official per-document loss; every attack's AUC is sound."""

from __future__ import annotations

import pytest
import torch
from sklearn.metrics import auc, roc_curve

from utils.errors import UserError
from utils.evaluation.mia import (
    DocumentStatistics,
    attack_aucs,
    document_nll,
    keep_document_starts,
    min_k_attack,
    min_k_plus_plus_attack,
    min_k_plus_plus_scores,
    run_mia,
    token_statistics,
    zlib_attack,
    zlib_entropy,
)

from ..conftest import briefly_trained_model, random_sentences


@pytest.fixture(scope="module")
def world():
    """A tiny Olmo2 trained for 30 steps on the first 8 sentences (the "members")."""
    sentences = random_sentences(100)
    model, tokenizer = briefly_trained_model(sentences)
    return model, tokenizer, sentences


def _documents(sentences: list[str]) -> list[str]:
    # Lengths from 2 words to 6 sentences, in no particular order.
    return [" ".join(sentences[20:26]), "red cat", sentences[0], " ".join(sentences[30:32]), sentences[40][:12],
            " ".join(sentences[1:4]), "moon sun star", sentences[50]]


def _official_nll(model, tokenizer, document: str) -> float:
    enc = tokenizer(document, return_tensors="pt")
    with torch.no_grad():
        return float(model(**enc, labels=enc["input_ids"]).loss)


def test_batched_nll_equals_unbatched_loss(world) -> None:
    model, tokenizer, sentences = world
    documents = _documents(sentences)
    expected = [_official_nll(model, tokenizer, d) for d in documents]
    for batch_size in (1, 3, 16):
        got = document_nll(model, tokenizer, documents, batch_size=batch_size, progress=False)
        assert got == pytest.approx(expected, abs=1e-5)


def test_statistics_and_nll_agree(world) -> None:
    model, tokenizer, sentences = world
    documents = _documents(sentences)
    stats = token_statistics(model, tokenizer, documents, batch_size=3, progress=False)
    for document, s in zip(documents, stats):
        n = len(tokenizer(document)["input_ids"])
        assert s.n_tokens == n and len(s.token_log_probs) == n - 1 == len(s.mu) == len(s.sigma)
        assert s.nll == pytest.approx(-sum(s.token_log_probs) / (n - 1), abs=1e-6)
        assert s.zlib_bytes == zlib_entropy(document)


def test_min_k_plus_plus_moments_match_direct_computation(world) -> None:
    model, tokenizer, sentences = world
    documents = _documents(sentences)
    stats = token_statistics(model, tokenizer, documents, batch_size=4, progress=False)
    index = 3
    ids = tokenizer(documents[index], return_tensors="pt")["input_ids"]
    with torch.no_grad():
        logits = model(input_ids=ids).logits[0, :-1].double()
    log_probs = torch.log_softmax(logits, dim=-1)
    probs = log_probs.exp()
    mu = (probs * log_probs).sum(-1)
    sigma = ((probs * log_probs ** 2).sum(-1) - mu ** 2).sqrt()
    token_lp = log_probs.gather(-1, ids[0, 1:].unsqueeze(-1)).squeeze(-1)
    s = stats[index]
    assert s.token_log_probs == pytest.approx(token_lp.tolist(), abs=1e-5)
    assert s.mu == pytest.approx(mu.tolist(), abs=1e-5)
    assert s.sigma == pytest.approx(sigma.tolist(), abs=1e-5)
    expected_scores = ((token_lp - mu) / sigma).tolist()
    assert min_k_plus_plus_scores(s) == pytest.approx(expected_scores, abs=1e-4)
    k_count = max(1, int(len(expected_scores) * 0.2))
    assert min_k_plus_plus_attack([s], k=0.2)[0] == pytest.approx(sum(sorted(expected_scores)[:k_count]) / k_count,
                                                                 abs=1e-4)


def test_run_mia_loss_auc_is_the_official_one(world) -> None:
    model, tokenizer, sentences = world
    members, nonmembers = sentences[:8], sentences[60:68]
    result = run_mia(model, tokenizer, members, nonmembers, batch_size=5, progress=False)
    assert set(result) == {"member_nll", "nonmember_nll", "auc", "score", "attacks"}
    assert result["member_nll"] == pytest.approx([_official_nll(model, tokenizer, d) for d in members], abs=1e-5)
    labels = [1] * len(members) + [0] * len(nonmembers)
    fpr, tpr, _ = roc_curve(labels, [-x for x in result["member_nll"] + result["nonmember_nll"]])
    assert result["auc"] == auc(fpr, tpr)
    assert result["attacks"]["loss"] == result["auc"]
    assert result["score"] == pytest.approx(1 - 2 * abs(result["auc"] - 0.5))
    assert set(result["attacks"]) == {"loss", "zlib", "min_k", "min_k_plus_plus"}
    assert all(0.0 <= value <= 1.0 for value in result["attacks"].values())
    # Trained on the members: the loss attack sees them.
    assert result["auc"] > 0.5


def _toy(nll: float, log_probs: list[float], mu: float = -1.0, sigma: float = 1.0, zlib_bytes: int = 50
         ) -> DocumentStatistics:
    return DocumentStatistics(nll=nll, token_log_probs=log_probs, mu=[mu] * len(log_probs),
                              sigma=[sigma] * len(log_probs), zlib_bytes=zlib_bytes, n_tokens=len(log_probs) + 1)


def test_separable_toy_case_gives_auc_one() -> None:
    members = [_toy(0.1 + 0.01 * i, [-0.1, -0.2, -0.05 * i, -0.3, -0.1]) for i in range(5)]
    nonmembers = [_toy(5.0 + 0.1 * i, [-4.0, -6.0, -5.0 - i, -3.0, -7.0]) for i in range(5)]
    assert attack_aucs(members, nonmembers) == {"loss": 1.0, "zlib": 1.0, "min_k": 1.0, "min_k_plus_plus": 1.0}
    # Swapping the roles gives the opposite extreme.
    assert attack_aucs(nonmembers, members)["loss"] == 0.0


def test_attack_definitions() -> None:
    stats = _toy(2.0, [-1.0, -4.0, -2.0, -3.0, -0.5, -6.0, -1.5, -2.5, -0.1, -0.2], zlib_bytes=40)
    assert zlib_attack([stats]) == [pytest.approx(-2.0 / 40)]
    assert min_k_attack([stats], k=0.2) == [pytest.approx((-6.0 - 4.0) / 2)]
    assert min_k_attack([stats], k=0.01) == [pytest.approx(-6.0)]  # at least one token
    assert min_k_plus_plus_attack([stats], k=0.2) == [pytest.approx(((-6.0 + 1) + (-4.0 + 1)) / 2)]
    with pytest.raises(ValueError):
        min_k_attack([stats], k=0.0)
    no_moments = DocumentStatistics(2.0, [-1.0], None, None, 10, 2)
    with pytest.raises(ValueError):
        min_k_plus_plus_attack([no_moments])
    assert "min_k_plus_plus" not in attack_aucs([no_moments], [no_moments])


def test_bad_inputs(world) -> None:
    model, tokenizer, _ = world
    with pytest.raises(UserError):
        document_nll(model, tokenizer, ["the cat sat.", ""], progress=False)
    with pytest.raises(UserError):
        run_mia(model, tokenizer, [], ["the cat sat."], progress=False)
    truncated = token_statistics(model, tokenizer, ["the cat sat on the mat near the old tree."], max_length=4,
                                 progress=False)
    assert truncated[0].n_tokens == 4


def test_documents_beyond_the_context_keep_their_start_and_are_counted(world):
    model, tokenizer, sentences = world
    context = model.config.max_position_embeddings
    long_document = " ".join(sentences) * 3
    ids = tokenizer(long_document)["input_ids"]
    assert len(ids) > context
    warned: list[str] = []
    nll = document_nll(model, tokenizer, [long_document, sentences[0]], progress=False, warn=warned.append)
    assert warned == [(f"MIA: 1 of 2 documents are longer than the model's context ({context} positions): "
                      f"each was scored on its first {context} tokens")]
    assert nll[0] == pytest.approx(document_nll(model, tokenizer, [long_document], max_length=context,
                                                progress=False, warn=warned.append)[0], abs=1e-6)
    assert keep_document_starts([[1, 2, 3]], None, print) == [[1, 2, 3]]
