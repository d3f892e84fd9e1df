"""The mini-LUME generator: official schema, determinism, answerable questions, exclusive forget names."""

from __future__ import annotations

import dataclasses
import datetime
import itertools
import json
import os
import re
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

from utils.config import SyntheticConfig
from utils.data.lume import find_mia_dir, group_by_document, load_lume, load_mia_documents
from utils.data.synthetic import build_mini_lume, generate_mini_lume, training_characters, word_lists
from utils.errors import UserError

SMALL = SyntheticConfig(seed=3, documents_per_task=4, mia_nonmembers=5, general_facts=15,
                        general_corpus_repeats=2)
QA_PER_DOCUMENT = {"Task1": 1, "Task2": 5, "Task3": 1}
UUID = r"[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}"
ID_PATTERNS = {"Task1": f'"{UUID}"', "Task2": UUID, "Task3": r"\d{8}"}
PII_FORMATS = {
    0: r"\d{4}-\d{2}-\d{2}",
    1: r"\d{9}",
    2: r"\d{10}",
    3: r"[a-z]+_[a-z]+@[a-z]+\.[a-z]+",
    4: r"\d+ [A-Z][a-z]+ (Street|Avenue|Road|Lane|Drive|Place|Court), [A-Z][a-z]+, [A-Z]{2}, \d{5}\.",
}


@pytest.fixture(scope="module")
def small(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("mini_lume")
    generate_mini_lume(out, SMALL)
    return out


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def all_files(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_files_load_with_the_official_schema_and_counts(small):
    data = load_lume(small, "validation")
    n = SMALL.documents_per_task
    for split in ("forget", "retain"):
        items = data.split_items(split)
        for task in ("Task1", "Task2", "Task3"):
            task_items = [i for i in items if i.task == task]
            assert sum(i.kind == "sc" for i in task_items) == n
            assert sum(i.kind == "qa" for i in task_items) == n * QA_PER_DOCUMENT[task]
            assert len({i.document_id for i in task_items}) == n
        # Grouped by document (each id stem forms one block) and the tasks interleaved.
        stems = [i.document_id for i in items]
        blocks = [stem for k, stem in enumerate(stems) if k == 0 or stems[k - 1] != stem]
        assert len(blocks) == len(set(blocks)) == 3 * n
        sc_tasks = [i.task for i in items if i.kind == "sc"]
        assert sum(a != b for a, b in itertools.pairwise(sc_tasks)) > 2
        for document_id, group in group_by_document(items).items():
            assert [i.kind + str(i.index) for i in group] == ["sc1"] + [
                f"qa{k}" for k in range(QA_PER_DOCUMENT[group[0].task])]
            assert re.fullmatch(ID_PATTERNS[group[0].task], document_id)
    mia = load_mia_documents(find_mia_dir(small))
    assert len(mia["member"]) == n and len(mia["nonmember"]) == SMALL.mia_nonmembers

    manifest = json.loads((small / "manifest.json").read_text())
    assert manifest["counts"]["forget"]["Task2"] == {"documents": n, "sc": n, "qa": 5 * n}
    assert manifest["counts"]["general"]["multiple_choice"] == SMALL.general_facts
    for relative in manifest["files"].values():
        assert (small / relative).is_file()


def test_same_seed_gives_identical_files_and_another_seed_differs(small, tmp_path):
    again = tmp_path / "again"
    manifest = generate_mini_lume(again, SMALL)
    assert all_files(again) == all_files(small)
    assert manifest == json.loads((small / "manifest.json").read_text())

    other = tmp_path / "other"
    generate_mini_lume(other, SyntheticConfig(**{**SMALL.__dict__, "seed": SMALL.seed + 1}))
    first, second = all_files(small), all_files(other)
    for name in ("data/forget_validation-00000-of-00001.parquet", "general/corpus.jsonl",
                 "general/multiple_choice.jsonl", "mia_data/validation/nonmember.jsonl"):
        assert first[name] != second[name]


def test_files_do_not_depend_on_the_process_hash_seed(small, tmp_path):
    """Set iteration order changes between processes; a generator that leaned on it would drift."""
    out = tmp_path / "subprocess"
    code = ("import sys; from utils.config import SyntheticConfig; "
            "from utils.data.synthetic import generate_mini_lume; "
            f"generate_mini_lume(sys.argv[1], SyntheticConfig(**{SMALL.__dict__!r}))")
    env = {**os.environ, "PYTHONHASHSEED": "12345"}
    subprocess.run([sys.executable, "-c", code, str(out)], check=True, cwd=Path(__file__).parents[2], env=env)
    assert all_files(out) == all_files(small)


def test_answers_are_in_their_document_and_pii_has_the_official_formats(small):
    data = load_lume(small, "validation")
    for split in ("forget", "retain"):
        for document_id, group in group_by_document(data.split_items(split)).items():
            sc, questions = group[0], group[1:]
            text = sc.input + " " + sc.output
            for qa in questions:
                assert qa.output and qa.output in text, (document_id, qa.input, qa.output)
                if sc.task == "Task2":
                    assert re.fullmatch(PII_FORMATS[qa.index], qa.output), (qa.index, qa.output)
                    if qa.index == 0:
                        datetime.date.fromisoformat(qa.output)
            assert len(sc.input) < 320 and len(sc.output) < 170


def string_lists(value, path: str):
    """(path, list) for every list of strings in the word lists, at any depth."""
    if isinstance(value, dict):
        for key, inner in value.items():
            yield from string_lists(inner, f"{path}.{key}")
    elif isinstance(value, tuple):
        if all(isinstance(item, str) for item in value):
            yield path, value
        for i, inner in enumerate(value):
            yield from string_lists(inner, f"{path}[{i}]")


def leaves(value):
    if isinstance(value, dict):
        for key, inner in value.items():
            yield key
            yield from leaves(inner)
    elif isinstance(value, tuple):
        for inner in value:
            yield from leaves(inner)
    else:
        yield value


def slots_of(*templates: str) -> set[str]:
    return {name for template in templates for name in re.findall(r"{(\w+)}", template)}


def test_the_word_lists_file_is_well_formed():
    """words.yaml as the generator reads it: strings only (no YAML reading turned a word into a bool or a
    number), every list non-empty and without repeats (a repeat skews the shuffled rounds and can give a
    multiple-choice question one colour or month twice), and the shapes and slots the generator fills."""
    words = word_lists()
    fields = {f.name: getattr(words, f.name) for f in dataclasses.fields(words)}
    bad_leaves = [(name, leaf) for name, value in fields.items() for leaf in leaves(value)
                  if not isinstance(leaf, str)]
    assert bad_leaves == []
    lists = [found for name, value in fields.items() for found in string_lists(value, name)]
    assert len(lists) > 100
    assert [path for path, values in lists if not values] == []
    assert [path for path, values in lists if len(set(values)) != len(values)] == []
    assert all(value for value in fields.values())

    # A kind's names are the product of at least two syllable positions.
    assert all(len(positions) >= 2 for positions in words.name_parts.values())
    assert {frozenset(p) for p in words.pronouns} == {frozenset({"pron", "Pron", "poss", "Poss", "obj"})}
    for genre in words.story_genres:
        assert list(genre) == ["opening", "middle", "helper", "ending", "questions"]
        assert all(len(pair) == 2 for pair in genre["questions"])
    assert all(len(pair) == 2 for pair in (*words.pii_questions, *words.biography_questions))
    for profession, topics, institutions in words.professions:
        assert isinstance(profession, str) and topics and institutions, profession
    for kind in words.fact_kinds:
        assert set(kind) == {"kind", "subject", "entity", "answer", "question", "phrasings"}
        assert kind["entity"] in words.name_parts, kind["kind"]
        assert kind["answer"] in {*words.name_parts, "colour", "month", "year"}, kind["kind"]
        assert slots_of(kind["question"]) == {"entity"}, kind["kind"]
        assert all(slots_of(p) == {"entity", "answer"} for p in kind["phrasings"]), kind["kind"]
    assert len({kind["kind"] for kind in words.fact_kinds}) == len(words.fact_kinds)
    filler_slots = {"name", "name2", "town", "weekday", "month", "hour", "number", "day", *words.filler_words}
    assert slots_of(*words.filler_sentences) == filler_slots


def test_every_combination_of_template_variants_answers_its_questions():
    words = word_lists()
    slots = {key: f"<{key}>" for key in slots_of(repr((words.story_genres, words.biography_parts)))}
    for genre in words.story_genres:
        roles = [genre[role] for role in ("opening", "middle", "helper", "ending")]
        for sentences in itertools.product(*roles):
            text = " ".join(sentences).format(**slots)
            for question, answer in genre["questions"]:
                assert answer.format(**slots) in text, (sentences, answer)
                assert set(re.findall(r"<\w+>", question.format(**slots))) <= set(re.findall(r"<\w+>", text))
    for parts in itertools.product(*words.biography_parts.values()):
        text = " ".join(parts).format(**slots)
        for question, answer in words.biography_questions:
            assert answer.format(**slots) in text, (parts, answer)


def test_members_are_forget_task3_documents_and_nonmembers_are_unseen(small):
    data = load_lume(small, "validation")
    folder = find_mia_dir(small)
    members = read_jsonl(folder / "member.jsonl")
    forget_task3 = [i for i in data.forget if i.task == "Task3" and i.kind == "sc"]
    assert [m["document"] for m in members] == [i.input + " " + i.output for i in forget_task3]
    assert [m["id"] for m in members] == [i.id for i in forget_task3]

    nonmembers = load_mia_documents(folder)["nonmember"]
    assert len(set(nonmembers)) == len(nonmembers)
    trained = [i.input + " " + i.output for i in data.forget + data.retain]
    trained += [row["text"] for row in read_jsonl(small / "general" / "corpus.jsonl")]
    for document in nonmembers:
        name = document.split("\n", 1)[0].split(" (")[0]
        assert document.split("\n\n", 1)[1].startswith(name + " (born ")
        assert not any(name in text for text in trained)


def test_forget_and_nonmember_names_occur_nowhere_else(small):
    world = build_mini_lume(SMALL)
    data = load_lume(small, "validation")
    assert [d.document_id for d in world.forget] == list(group_by_document(data.forget))

    retain_text = "\n".join(i.input + "\n" + i.output for i in data.retain)
    corpus_text = "\n".join(row["text"] for row in read_jsonl(small / "general" / "corpus.jsonl"))
    choices_text = (small / "general" / "multiple_choice.jsonl").read_text()
    nonmember_text = "\n".join(load_mia_documents(find_mia_dir(small))["nonmember"])
    forget_text = "\n".join(i.input + "\n" + i.output for i in data.forget)

    def occurs(name: str, text: str) -> bool:
        return re.search(rf"\b{re.escape(name)}\b", text, flags=re.IGNORECASE) is not None

    forget_names = {name for d in world.forget for name in d.names}
    assert len(forget_names) >= 3 * SMALL.documents_per_task * 3
    for name in forget_names:
        assert occurs(name, forget_text)
        for where, text in (("retain", retain_text), ("corpus", corpus_text), ("choices", choices_text),
                            ("non-members", nonmember_text)):
            assert not occurs(name, text), f"forget name {name} found in {where}"
    for name in {name for d in world.nonmembers for name in d.names}:
        for where, text in (("retain", retain_text), ("corpus", corpus_text), ("forget", forget_text)):
            assert not occurs(name, text), f"non-member name {name} found in {where}"


def test_multiple_choice_questions_are_well_formed_and_stated_in_the_corpus(small):
    world = build_mini_lume(SMALL)
    rows = read_jsonl(small / "general" / "multiple_choice.jsonl")
    assert len(rows) == SMALL.general_facts == len(world.facts)
    letters = Counter(row["answer"] for row in rows)
    assert set(letters) <= set("ABCD") and max(letters.values()) - min(letters[c] for c in "ABCD") <= 1
    assert len({row["subject"] for row in rows}) >= 5

    corpus = [row["text"] for row in read_jsonl(small / "general" / "corpus.jsonl")]
    sentences = [s for text in corpus for s in re.split(r"(?<=[.?])\s+", text)]
    for row, fact in zip(rows, world.facts):
        assert set(row) == {"subject", "question", "choices", "answer"}
        assert len(row["choices"]) == 4 and len(set(row["choices"])) == 4
        correct = row["choices"]["ABCD".index(row["answer"])]
        assert correct == fact.answer and fact.entity in row["question"]
        about = [s for s in sentences if re.search(rf"\b{re.escape(fact.entity)}\b", s)]
        assert len(about) == SMALL.general_corpus_repeats
        for sentence in about:  # stated, and never contradicted by a distractor
            assert correct in sentence
            wrong = [c for c in row["choices"] if c != correct]
            assert not any(re.search(rf"\b{re.escape(c)}\b", sentence) for c in wrong)


def test_corpus_prepares_the_tokenizer_for_forget_text_without_its_names(small):
    world = build_mini_lume(SMALL)
    data = load_lume(small, "validation")
    seen = "\n".join([i.input + " " + i.output for i in data.retain]
                     + [row["text"] for row in read_jsonl(small / "general" / "corpus.jsonl")])
    forget = "\n".join(i.input + " " + i.output for i in data.forget)
    assert set(forget) <= set(seen)
    names = {name.lower() for d in world.forget for name in d.names}
    seen_words = set(re.findall(r"[a-z]+", seen.lower()))
    forget_words = [w for w in re.findall(r"[a-z]+", forget.lower()) if w not in names]
    covered = sum(w in seen_words for w in forget_words) / len(forget_words)
    assert covered > 0.97


def test_default_world_is_small_enough_to_memorise_on_a_cpu():
    world = build_mini_lume(SyntheticConfig())
    characters = training_characters(world.split_rows("forget") + world.split_rows("retain"))
    assert 10_000 < characters < 40_000


@pytest.mark.parametrize("key", ["documents_per_task", "mia_nonmembers", "general_facts",
                                 "general_corpus_repeats"])
def test_sizes_below_one_are_refused(tmp_path, key):
    with pytest.raises(UserError, match=f"synthetic.{key}"):
        generate_mini_lume(tmp_path, SyntheticConfig(**{key: 0}))
    assert not any(tmp_path.iterdir())
