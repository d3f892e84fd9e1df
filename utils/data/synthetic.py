"""A seeded "mini-LUME": the benchmark's three tasks in the official schema, at a size a tiny model
memorises on a CPU in minutes, plus a general-knowledge corpus and its multiple-choice questions.

No model hub is reachable from the embedded default, so the project builds its own small world.
The generator mirrors the real release closely enough that every downstream piece (loader,
training, official metrics, MIA) runs unchanged on it:

* `data/{forget,retain}_validation-00000-of-00001.parquet`: columns `id, input, output, task,
  split`; rows grouped by document, tasks interleaved in a seeded order; Task1 ids are a quoted
  UUID, Task2 a bare UUID, Task3 a numeric id, each followed by `sc1` / `qaN`.
* `mia_data/validation/{member,nonmember}.jsonl`: members are the forget Task3 documents
  (sc input + " " + sc output, as released); non-members come from the same Task3 generator and are
  never written anywhere else, so a loss attack can only tell them apart by memorisation.
* `general/corpus.jsonl` (pre-training text) and `general/multiple_choice.jsonl` (the utility
  benchmark, MMLU-shaped: subject, question, four choices, answer letter).

Names are made up from syllable pools and drawn *without replacement* from one seeded stream, so a
forget person, city or street occurs nowhere but in its own forget document: unlearning it cannot be
undone by the retain set, the pre-training corpus or the non-members. Every random draw comes from
one `random.Random(config.seed)` (UUIDs included), so a seed gives byte-identical files. The
word lists and templates are data, `words.yaml` beside this module.
"""

from __future__ import annotations

import dataclasses
import functools
import itertools
import os
import random
import re
import string
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from utils.config import SyntheticConfig
from utils.data.lume import TASKS
from utils.errors import UserError
from utils.io import atomic_write, atomic_write_json, write_jsonl

SPLIT_NAME = "validation"  # the file names the loader looks for by default (DataConfig.split)
FORGET_FILE = f"data/forget_{SPLIT_NAME}-00000-of-00001.parquet"
RETAIN_FILE = f"data/retain_{SPLIT_NAME}-00000-of-00001.parquet"
MEMBER_FILE = f"mia_data/{SPLIT_NAME}/member.jsonl"
NONMEMBER_FILE = f"mia_data/{SPLIT_NAME}/nonmember.jsonl"
CORPUS_FILE = "general/corpus.jsonl"
# Each fact once more as question + answer, in the exact form the cloze utility asks it: a small
# model does not generalise from "X is the capital of Y" to "What is the capital of Y? Answer: X",
# so without these lines the utility benchmark would measure phrasing, not retained knowledge.
QA_DRILL_FILE = "general/qa_drill.jsonl"
MULTIPLE_CHOICE_FILE = "general/multiple_choice.jsonl"
MANIFEST_FILE = "manifest.json"
COLUMNS = ("id", "input", "output", "task", "split")
LETTERS = "ABCD"

WORDS_FILE = "words.yaml"  # beside this module, shipped as package data


@dataclass(frozen=True)
class WordLists:
    """The generator's word lists and templates, as `words.yaml` gives them (its lists read as tuples)."""

    name_parts: dict[str, tuple[tuple[str, ...], ...]]  # per kind, the syllables of each position
    pronouns: tuple[dict[str, str], ...]
    months: tuple[str, ...]
    weekdays: tuple[str, ...]
    colours: tuple[str, ...]
    states: tuple[str, ...]
    street_kinds: tuple[str, ...]
    mail_domains: tuple[str, ...]
    story_words: dict[str, tuple[str, ...]]
    story_genres: tuple[dict[str, tuple], ...]
    pii_templates: tuple[str, ...]
    pii_jobs: tuple[str, ...]
    pii_questions: tuple[tuple[str, str], ...]
    professions: tuple[tuple[str, tuple[str, ...], tuple[str, ...]], ...]  # profession, topics, institutions
    nationalities: tuple[str, ...]
    awards: tuple[str, ...]
    biography_parts: dict[str, tuple[str, ...]]
    biography_questions: tuple[tuple[str, str], ...]
    fact_kinds: tuple[dict[str, Any], ...]  # kind, subject, entity, answer, question, phrasings
    filler_sentences: tuple[str, ...]
    filler_words: dict[str, tuple[str, ...]]

    @functools.cached_property
    def template_words(self) -> frozenset[str]:
        """Words the templates themselves can produce: a drawn name must not be one of them, or a forget
        name could "occur" in retain or corpus text through an ordinary word."""
        return frozenset(_words_in([getattr(self, f.name) for f in dataclasses.fields(self)
                                    if f.name != "name_parts"]))


@functools.cache
def word_lists() -> WordLists:
    """`words.yaml`, read once per process."""
    text = resources.files(__package__).joinpath(WORDS_FILE).read_text(encoding="utf-8")
    data = yaml.safe_load(text)
    expected = [f.name for f in dataclasses.fields(WordLists)]
    if not isinstance(data, dict) or set(data) != set(expected):
        found = sorted(data) if isinstance(data, dict) else type(data).__name__
        raise UserError(f"synthetic: {WORDS_FILE} must have exactly the keys {expected}, found {found}")
    return WordLists(**{key: _frozen(value) for key, value in data.items()})


def _frozen(value: Any) -> Any:
    """Lists as tuples (the shapes `WordLists` declares): no reader can append to or reorder the lists of the
    one cached copy."""
    if isinstance(value, list):
        return tuple(_frozen(v) for v in value)
    if isinstance(value, dict):
        return {key: _frozen(v) for key, v in value.items()}
    return value


def _words_in(value: Any) -> set[str]:
    if isinstance(value, str):
        return {w.lower() for w in re.findall(r"[A-Za-z]+", value)}
    if isinstance(value, dict):
        return set().union(*(_words_in(k) | _words_in(v) for k, v in value.items())) if value else set()
    if isinstance(value, (tuple, list)):
        return set().union(*(_words_in(v) for v in value)) if value else set()
    return set()


# --------------------------------------------------------------------------------------------
# The in-memory world


@dataclass
class Document:
    """One benchmark document: its sentence completion and its questions, plus the names it owns."""

    task: str
    document_id: str  # the id stem: quoted UUID (Task1), bare UUID (Task2) or digits (Task3)
    sc_input: str
    sc_output: str
    questions: list[tuple[str, str]]
    names: tuple[str, ...]  # made-up names that belong to this document only

    @property
    def text(self) -> str:
        """The document as the release joins it (MIA documents, training text of the sc item)."""
        return self.sc_input + " " + self.sc_output

    def rows(self, split: str) -> list[dict[str, str]]:
        rows = [{"id": f"{self.document_id}sc1", "input": self.sc_input, "output": self.sc_output,
                 "task": self.task, "split": split}]
        rows += [{"id": f"{self.document_id}qa{i}", "input": question, "output": answer, "task": self.task,
                  "split": split} for i, (question, answer) in enumerate(self.questions)]
        return rows


@dataclass
class Fact:
    """A general-knowledge fact: stated in the corpus, asked in one multiple-choice question."""

    kind: str
    subject: str
    entity: str
    answer: str
    statements: list[str]
    question: str
    choices: list[str]
    answer_letter: str

    def multiple_choice_row(self) -> dict[str, Any]:
        return {"subject": self.subject, "question": self.question, "choices": list(self.choices),
                "answer": self.answer_letter}


@dataclass
class MiniLume:
    """Everything `generate_mini_lume` writes, before it is written."""

    forget: list[Document]
    retain: list[Document]
    nonmembers: list[Document]
    facts: list[Fact]
    corpus: list[str]

    def split_rows(self, split: str) -> list[dict[str, str]]:
        documents = self.forget if split == "forget" else self.retain
        return [row for document in documents for row in document.rows(split)]


class NameDrawer:
    """Made-up names sampled without replacement, unique across all kinds and never a template word.

    Each kind's pool (the product of its syllable parts) is shuffled once, on first use, by the shared
    seeded stream; a name, once drawn, is gone for every kind, which is what keeps forget names out of
    everything else.
    """

    def __init__(self, rng: random.Random):
        self.rng = rng
        self.words = word_lists()
        self.used: set[str] = set()
        self.pools: dict[str, list[str]] = {}

    def draw(self, kind: str) -> str:
        pool = self.pools.get(kind)
        if pool is None:
            candidates = sorted({"".join(parts) for parts in itertools.product(*self.words.name_parts[kind])})
            pool = [c for c in candidates if _pronounceable(c)]
            self.rng.shuffle(pool)
            self.pools[kind] = pool
        while pool:
            name = pool.pop()
            if name.lower() not in self.used and name.lower() not in self.words.template_words:
                self.used.add(name.lower())
                return name
        raise UserError(f"synthetic: ran out of distinct made-up {kind} names; lower "
                        "synthetic.documents_per_task, synthetic.mia_nonmembers or synthetic.general_facts")


_VOWEL_PAIRS = {"ia", "ie", "io", "ea", "ei", "ou", "ay", "ey", "oy"}


def _pronounceable(name: str) -> bool:
    """Drop joins like 'Alaa' or 'Zeloen' that read as typos rather than names."""
    pairs = re.findall(r"(?=([aeiouy]{2}))", name.lower())
    return all(pair in _VOWEL_PAIRS for pair in pairs) and not re.search(r"[aeiouy]{3}", name.lower())


class SlotPicker:
    """Slot values drawn in shuffled rounds: every value of a list is used once before any repeats.

    Rounds keep genres, professions and phrasings balanced over a handful of documents, and let the
    corpus run until every template word has appeared (`covered`), so a tokenizer trained on retain +
    corpus knows all the forget set's ordinary words.
    """

    def __init__(self, rng: random.Random):
        self.rng = rng
        self.queues: dict[str, list[Any]] = {}
        self.finished: set[str] = set()

    def pick(self, key: str, values: Sequence[Any]) -> Any:
        queue = self.queues.get(key)
        if not queue:
            queue = list(values)
            self.rng.shuffle(queue)
            self.queues[key] = queue
        value = queue.pop()
        if not queue:
            self.finished.add(key)
        return value

    def covered(self) -> bool:
        """Whether anything was picked and every list picked from has gone through a full round."""
        return bool(self.queues) and set(self.queues) <= self.finished


class _Generator:
    """Holds the one seeded stream and the name drawer while documents and facts are made."""

    def __init__(self, config: SyntheticConfig):
        self.rng = random.Random(config.seed)
        self.words = word_lists()
        self.names = NameDrawer(self.rng)
        self.numeric_ids: set[str] = set()

    # ids --------------------------------------------------------------------------------------
    def uuid(self) -> str:
        return str(uuid.UUID(int=self.rng.getrandbits(128), version=4))

    def numeric_id(self) -> str:
        while True:
            candidate = str(self.rng.randrange(10_000_000, 100_000_000))
            if candidate not in self.numeric_ids:
                self.numeric_ids.add(candidate)
                return candidate

    def digits(self, n: int) -> str:
        return "".join(self.rng.choice(string.digits) for _ in range(n))

    # Task1 ------------------------------------------------------------------------------------
    def story(self, picker: SlotPicker) -> Document:
        g = picker.pick("story:genre", range(len(self.words.story_genres)))
        genre = self.words.story_genres[g]
        sentences = [picker.pick(f"story{g}:{role}", genre[role]) for role in ("opening", "middle", "helper")]
        ending = picker.pick(f"story{g}:ending", genre["ending"])
        question, answer = picker.pick(f"story{g}:questions", genre["questions"])
        # Only the slots this story shows are drawn, so a round of a word list means it was printed.
        used = _slot_names([*sentences, ending, question, answer])
        slots = {key: picker.pick(f"story:{key}", self.words.story_words[key])
                 for key in sorted(used & self.words.story_words.keys())}
        hero, friend, city = self.names.draw("first"), self.names.draw("first"), self.names.draw("city")
        slots.update(picker.pick("pronouns", self.words.pronouns), hero=hero, friend=friend, city=city,
                     future_year=str(self.rng.randrange(2100, 2400)))
        story = _capitalise(" ".join(_fill(template, slots) for template in sentences))
        return Document("Task1", f'"{self.uuid()}"', story, _capitalise(_fill(ending, slots)),
                        [(_fill(question, slots), _fill(answer, slots))], (hero, friend, city))

    # Task2 ------------------------------------------------------------------------------------
    def pii_biography(self, picker: SlotPicker) -> Document:
        first, last = self.names.draw("first"), self.names.draw("last")
        city, street = self.names.draw("city"), self.names.draw("last")
        birth_year, birth_month = self.rng.randrange(1950, 2001), self.rng.randrange(1, 13)
        number = self.rng.choice((str(self.rng.randrange(1, 100)), str(self.rng.randrange(100, 10_000))))
        template = picker.pick("pii:template", self.words.pii_templates)
        slots = dict(
            picker.pick("pronouns", self.words.pronouns), full=f"{first} {last}", city=city,
            job=picker.pick("pii:job", self.words.pii_jobs) if "job" in _slot_names([template]) else "",
            birth_date=f"{birth_year:04d}-{birth_month:02d}-{self.rng.randrange(1, 29):02d}",
            ssn="900" + self.digits(6),
            phone=str(self.rng.randrange(2, 10)) + self.digits(9),
            email=f"{first.lower()}_{last.lower()}@{picker.pick('pii:domain', self.words.mail_domains)}",
            address=f"{number} {street} {picker.pick('pii:street', self.words.street_kinds)}, {city}, "
                    f"{picker.pick('pii:state', self.words.states)}, {self.digits(5)}.",
        )
        text = _fill(template, slots)
        sc_input, sc_output = _split_at_space(text, 0.4)
        questions = [(_fill(q, slots), _fill(a, slots)) for q, a in self.words.pii_questions]
        return Document("Task2", self.uuid(), sc_input, sc_output, questions, (first, last, city, street))

    # Task3 ------------------------------------------------------------------------------------
    def encyclopedia_biography(self, picker: SlotPicker) -> Document:
        first, last, city = self.names.draw("first"), self.names.draw("last"), self.names.draw("city")
        profession, topics, institutions = picker.pick("bio:profession", self.words.professions)
        birth_year = self.rng.randrange(1930, 1986)
        joined = birth_year + self.rng.randrange(24, 36)
        slots = dict(
            picker.pick("pronouns", self.words.pronouns), full=f"{first} {last}", city=city,
            profession=profession,
            nationality=picker.pick("bio:nationality", self.words.nationalities),
            topic=picker.pick(f"bio:topic:{profession}", topics),
            institution=picker.pick(f"bio:institution:{profession}", institutions),
            award=picker.pick("bio:award", self.words.awards), joined=str(joined),
            award_year=str(joined + self.rng.randrange(3, 15)),
            born_long=(f"{self.rng.randrange(1, 29)} {picker.pick('bio:month', self.words.months)} "
                       f"{birth_year}"),
        )
        part = {role: _fill(picker.pick(f"bio:{role}", variants), slots)
                for role, variants in self.words.biography_parts.items()}
        sc_input = f"{part['title']}\n\n{part['opening']} {part['career']} {part['position']}"
        question, answer = picker.pick("bio:questions", self.words.biography_questions)
        return Document("Task3", self.numeric_id(), sc_input, part["ending"],
                        [(_fill(question, slots), _fill(answer, slots))], (first, last, city))

    def document(self, task: str, picker: SlotPicker) -> Document:
        make = {"Task1": self.story, "Task2": self.pii_biography, "Task3": self.encyclopedia_biography}[task]
        return make(picker)

    def split_documents(self, per_task: int) -> list[Document]:
        picker = SlotPicker(self.rng)
        documents = [self.document(task, picker) for task in TASKS for _ in range(per_task)]
        self.rng.shuffle(documents)  # grouped by document, tasks interleaved, like the release
        return documents

    def nonmember_documents(self, count: int) -> list[Document]:
        picker = SlotPicker(self.rng)
        return [self.encyclopedia_biography(picker) for _ in range(count)]

    # General knowledge ------------------------------------------------------------------------
    def answer_value(self, answer_type: str) -> str:
        if answer_type == "colour":
            return self.rng.choice(self.words.colours)
        if answer_type == "month":
            return self.rng.choice(self.words.months)
        if answer_type == "year":
            return str(self.rng.randrange(1100, 1900))
        return self.names.draw(answer_type)

    def facts(self, count: int, repeats: int) -> list[Fact]:
        kinds = [self.words.fact_kinds[i % len(self.words.fact_kinds)] for i in range(count)]
        self.rng.shuffle(kinds)
        drafts = []
        for kind in kinds:
            entity = self.names.draw(kind["entity"])
            drafts.append((kind, entity, self.answer_value(kind["answer"])))
        letters = [LETTERS[i % 4] for i in range(count)]
        self.rng.shuffle(letters)  # the correct letter is balanced over A-D, in seeded order
        facts = []
        for (kind, entity, answer), letter in zip(drafts, letters):
            same_kind = [a for k, _, a in drafts if k is kind]
            distractors = self.distractors(kind["answer"], answer, same_kind)
            choices = list(distractors)
            choices.insert(LETTERS.index(letter), answer)
            phrasings = list(kind["phrasings"])
            chosen = self.rng.sample(phrasings, min(repeats, len(phrasings)))
            chosen += [phrasings[i % len(phrasings)] for i in range(repeats - len(chosen))]
            facts.append(Fact(
                kind=kind["kind"], subject=kind["subject"], entity=entity, answer=answer,
                statements=[_capitalise(_fill(p, {"entity": entity, "answer": answer})) for p in chosen],
                question=_fill(kind["question"], {"entity": entity}), choices=choices, answer_letter=letter))
        return facts

    def distractors(self, answer_type: str, answer: str, same_kind: Sequence[str]) -> list[str]:
        """Three wrong choices of the answer's type: other facts' answers first, then fresh ones."""
        if answer_type == "colour":
            pool = [c for c in self.words.colours if c != answer]
        elif answer_type == "month":
            pool = [m for m in self.words.months if m != answer]
        else:
            pool = sorted({a for a in same_kind if a != answer})
        picked = self.rng.sample(pool, min(3, len(pool)))
        while len(picked) < 3:
            if answer_type == "year":
                candidate = str(int(answer) + self.rng.choice((-1, 1)) * self.rng.randrange(5, 150))
            else:
                candidate = self.names.draw(answer_type)
            if candidate != answer and candidate not in picked:
                picked.append(candidate)
        return picked

    # Corpus -----------------------------------------------------------------------------------
    def filler_paragraph(self, picker: SlotPicker, people: Sequence[str], towns: Sequence[str]) -> str:
        sentences = []
        for _ in range(self.rng.randrange(3, 6)):
            template = picker.pick("filler", self.words.filler_sentences)
            name, name2 = self.rng.sample(list(people), 2)
            slots = dict(name=name, name2=name2, town=self.rng.choice(towns),
                         weekday=self.rng.choice(self.words.weekdays),
                         month=self.rng.choice(self.words.months),
                         hour=str(self.rng.randrange(1, 13)),
                         number=str(self.rng.randrange(2, 90)), day=str(self.rng.randrange(1, 29)),
                         **{key: self.rng.choice(values) for key, values in self.words.filler_words.items()})
            sentences.append(_fill(template, slots))
        return " ".join(sentences)

    def corpus(self, facts: Sequence[Fact]) -> list[str]:
        """Fact statements in small paragraphs, everyday prose, and task-style text about other people.

        Task-style documents are made until every template list has been used in full (a few dozen),
        so no ordinary word of the forget set is new to the tokenizer, while the corpus stays the same
        size however many benchmark documents there are.
        """
        statements = [s for fact in facts for s in fact.statements]
        self.rng.shuffle(statements)
        rows = [" ".join(statements[i:i + 3]) for i in range(0, len(statements), 3)]
        people = [self.names.draw("first") for _ in range(8)]
        towns = [self.names.draw("city") for _ in range(4)]
        picker = SlotPicker(self.rng)
        paragraphs = 0
        while paragraphs < len(facts) or not picker.covered():
            rows.append(self.filler_paragraph(picker, people, towns))
            paragraphs += 1
        for task in TASKS:
            picker = SlotPicker(self.rng)
            while not picker.covered():
                document = self.document(task, picker)
                rows.append(document.text)
                rows += [f"{q} {a}" for q, a in document.questions]
        self.rng.shuffle(rows)
        return rows


def _slot_names(templates: Iterable[str]) -> set[str]:
    return {name for template in templates for name in re.findall(r"{(\w+)}", template)}


def _capitalise(text: str) -> str:
    return text[:1].upper() + text[1:]


def _fill(template: str, slots: dict[str, str]) -> str:
    """Format a template and mend its articles: templates say 'a {slot}' whatever the slot starts with."""
    return re.sub(r"\b([Aa]) (?=[AEIOUaeiou])", r"\1n ", template.format(**slots))


def _split_at_space(text: str, fraction: float) -> tuple[str, str]:
    """Cut at the space nearest `fraction` of the text, as the release cuts Task2 mid-sentence;
    input + " " + output gives the text back."""
    target = int(len(text) * fraction)
    spaces = [i for i, ch in enumerate(text) if ch == " "]
    cut = min(spaces, key=lambda i: (abs(i - target), i))
    return text[:cut], text[cut + 1:]


def _check_config(config: SyntheticConfig) -> None:
    for key in ("documents_per_task", "mia_nonmembers", "general_facts", "general_corpus_repeats"):
        if getattr(config, key) < 1:
            raise UserError(f"config: synthetic.{key} must be at least 1, got {getattr(config, key)}")


def build_mini_lume(config: SyntheticConfig) -> MiniLume:
    """The whole world in memory; the order of draws is fixed, so the seed decides everything."""
    _check_config(config)
    generator = _Generator(config)
    forget = generator.split_documents(config.documents_per_task)
    retain = generator.split_documents(config.documents_per_task)
    nonmembers = generator.nonmember_documents(config.mia_nonmembers)
    facts = generator.facts(config.general_facts, config.general_corpus_repeats)
    corpus = generator.corpus(facts)
    return MiniLume(forget, retain, nonmembers, facts, corpus)


# --------------------------------------------------------------------------------------------
# Writing


def _write_parquet(path: Path, rows: list[dict[str, str]]) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pa.table({column: pa.array([row[column] for row in rows], type=pa.string())
                      for column in COLUMNS})
    atomic_write(path, lambda tmp: pq.write_table(table, tmp))


def _counts(documents: Iterable[Document]) -> dict[str, dict[str, int]]:
    out = {task: {"documents": 0, "sc": 0, "qa": 0} for task in TASKS}
    for document in documents:
        out[document.task]["documents"] += 1
        out[document.task]["sc"] += 1
        out[document.task]["qa"] += len(document.questions)
    return out


def training_characters(rows: Iterable[dict[str, str]]) -> int:
    """Characters of input + " " + output over rows: the size a model has to memorise."""
    return sum(len(row["input"]) + 1 + len(row["output"]) for row in rows)


def generate_mini_lume(out_dir: str | os.PathLike, config: SyntheticConfig) -> dict:
    """Write the mini-LUME, its MIA files and the general corpus under `out_dir`; return the manifest.

    Each file is written atomically and the manifest last, so a folder with `manifest.json` is complete.
    Paths in the manifest are relative to `out_dir`, so the folder can move and two runs with one seed
    are byte-identical wherever they are written.
    """
    out = Path(out_dir)
    world = build_mini_lume(config)
    forget_rows, retain_rows = world.split_rows("forget"), world.split_rows("retain")
    members = [d for d in world.forget if d.task == "Task3"]
    _write_parquet(out / FORGET_FILE, forget_rows)
    _write_parquet(out / RETAIN_FILE, retain_rows)
    write_jsonl(out / MEMBER_FILE, [{"id": f"{d.document_id}sc1", "document": d.text} for d in members])
    write_jsonl(out / NONMEMBER_FILE, [{"id": d.document_id, "document": d.text} for d in world.nonmembers])
    write_jsonl(out / CORPUS_FILE, [{"text": text} for text in world.corpus])
    write_jsonl(out / MULTIPLE_CHOICE_FILE, [fact.multiple_choice_row() for fact in world.facts])
    write_jsonl(out / QA_DRILL_FILE, [{"text": f"{fact.question} Answer: {fact.answer}"} for fact in world.facts])
    manifest = {
        "generator": "utils.data.synthetic",
        "synthetic": dataclasses.asdict(config),
        "split": SPLIT_NAME,
        "files": {"forget": FORGET_FILE, "retain": RETAIN_FILE, "mia_member": MEMBER_FILE,
                  "mia_nonmember": NONMEMBER_FILE, "general_corpus": CORPUS_FILE,
                  "multiple_choice": MULTIPLE_CHOICE_FILE, "qa_drill": QA_DRILL_FILE},
        "counts": {
            "forget": _counts(world.forget), "retain": _counts(world.retain),
            "rows": {"forget": len(forget_rows), "retain": len(retain_rows)},
            "mia": {"member": len(members), "nonmember": len(world.nonmembers)},
            "general": {"facts": len(world.facts), "corpus_rows": len(world.corpus),
                        "multiple_choice": len(world.facts),
                        "subjects": sorted({fact.subject for fact in world.facts})},
        },
        "characters": {"forget": training_characters(forget_rows), "retain": training_characters(retain_rows),
                       "general_corpus": sum(len(text) for text in world.corpus)},
    }
    atomic_write_json(out / MANIFEST_FILE, manifest)
    return manifest
