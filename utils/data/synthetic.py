"""A seeded "mini-LUME": the benchmark's three tasks in the official schema, at a size a tiny model
memorises on a CPU in minutes, plus a general-knowledge corpus and its multiple-choice questions.

No model hub is reachable from the embedded default, so the project builds its own small world
(DESIGN.md, "The embedded default"). The generator mirrors the real release closely enough that
every downstream piece (loader, training, official metrics, MIA) runs unchanged on it:

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
one `random.Random(config.seed)` (UUIDs included), so a seed gives byte-identical files.
"""

from __future__ import annotations

import dataclasses
import itertools
import os
import random
import re
import string
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

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

# --------------------------------------------------------------------------------------------
# Name pools. Each kind is the product of its parts; `NameDrawer` samples it without replacement.

_NAME_PARTS: dict[str, tuple[tuple[str, ...], ...]] = {
    "first": (
        ("Al", "Bel", "Cor", "Dar", "El", "Fen", "Gal", "Hal", "Is", "Jor", "Kal", "Lor", "Mar", "Nel",
         "Or", "Pel", "Ros", "Sel", "Tam", "Vel", "Wyn", "Yar", "Zel", "Ber", "Cal", "Del", "Ed", "Fer",
         "Gil", "Har", "An", "Bri", "Cas", "Dor", "Em", "Fla", "Gwen", "Hen", "Ivo", "Jas", "Kes", "Lin",
         "Mel", "Nor"),
        ("", "an", "el", "ar", "ri", "ol"),
        ("a", "ia", "ina", "en", "is", "on", "ette", "ira", "ric", "wen", "ara", "ie", "ian", "ene",
         "iel", "ona"),
    ),
    "last": (
        ("Ash", "Black", "Brad", "Cald", "Dun", "Fair", "Glen", "Hart", "Kel", "Lang", "Mor", "North",
         "Pen", "Rad", "Stan", "Thorn", "Wex", "Yar", "Harl", "Mar", "Kest", "Brom", "Tal", "Wold", "Birk",
         "Crom", "Drum", "Ful", "Gar", "Hol", "Lock", "Mow", "Pell", "Rom", "Sher", "Trel"),
        ("", "er", "en", "ing"),
        ("ford", "well", "by", "ton", "wick", "ley", "mere", "croft", "dale", "holm", "stead", "worth",
         "ham", "shaw"),
    ),
    "city": (
        ("Ambr", "Bryn", "Carr", "Dove", "Esk", "Fal", "Grim", "Hollow", "Ivy", "Lark", "Mill", "Oak",
         "Quarr", "Rook", "Salt", "Tarn", "Umber", "Vale", "Wren", "Ald", "Bram", "Cold", "Elm", "Fern",
         "Gold", "Heath", "Kings", "Lynd", "Marsh", "Stone", "Bell", "Cross", "Deer", "East", "Fox", "High",
         "Long", "Mere", "Red", "Sand", "West", "White", "Ash", "Brack"),
        ("", "en", "ing"),
        ("mouth", "bury", "haven", "port", "field", "gate", "moor", "brook", "wick", "stow", "minster",
         "cliff", "bridge", "hurst"),
    ),
    "country": (
        ("Var", "Bel", "Cor", "Dal", "Est", "Gor", "Hal", "Ith", "Kor", "Lun", "Mor", "Nor", "Ost", "Pal",
         "Quen", "Ruth", "Sar", "Tor", "Ul", "Ves", "Zan", "Bren", "Cael", "Dor"),
        ("ia", "land", "ora", "mark", "aria", "enia", "ova", "istan", "esh", "avia"),
    ),
    "river": (
        ("Ves", "Amb", "Tol", "Sev", "Der", "Ist", "Lur", "Mav", "Ner", "Ous", "Tam", "Wel", "Yar", "Cal",
         "Dov"),
        ("ar", "ine", "ell", "ow", "anne", "ey", "ith", "on"),
    ),
    "animal": (
        ("glimmer", "moss", "thorn", "dusk", "reed", "frost", "ember", "cinder", "hollow", "brindle",
         "marsh", "cloud", "stone", "bramble", "silt", "fern"),
        ("fox", "hare", "owl", "newt", "finch", "toad", "wren", "otter", "stoat", "heron", "lynx", "vole",
         "moth", "beetle"),
    ),
    "moon": (
        ("Ael", "Bry", "Cyr", "Dei", "Eos", "Fio", "Hyl", "Ione", "Kal", "Lys", "Myr", "Nyx", "Oph", "Pyr",
         "Rhe", "Syl", "Thal", "Ury", "Vey", "Xan"),
        ("a", "on", "is", "ene", "ia", "ara", "os"),
    ),
    "planet": (
        ("Ar", "Bel", "Cas", "Dra", "Er", "Gal", "Hel", "Kry", "Mer", "Ny", "Or", "Pol", "Sar", "Tel", "Zer"),
        ("ion", "aris", "eth", "ova", "une", "ax", "ador"),
    ),
    "plant": (
        ("amber", "bell", "candle", "dew", "ember", "feather", "gold", "honey", "ivory", "lantern", "moon",
         "pepper", "silver", "star", "velvet", "winter"),
        ("wort", "bloom", "thistle", "bell", "leaf", "petal", "root", "vine"),
    ),
    "currency": (
        ("cor", "dal", "fen", "gil", "kron", "lor", "mar", "pel", "ros", "tal", "vel", "zan"),
        ("in", "et", "ar", "os", "ic", "a"),
    ),
}

# --------------------------------------------------------------------------------------------
# Word lists and templates. Slots are `{name}` fields filled by `str.format`.

PRONOUNS = ({"pron": "she", "Pron": "She", "poss": "her", "Poss": "Her", "obj": "her"},
            {"pron": "he", "Pron": "He", "poss": "his", "Poss": "His", "obj": "him"})
MONTHS = ("January", "February", "March", "April", "May", "June", "July", "August", "September",
          "October", "November", "December")
WEEKDAYS = ("Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday")
COLOURS = ("red", "blue", "green", "yellow", "orange", "purple", "grey", "white", "black", "brown",
           "silver", "golden")
STATES = ("CA", "OR", "WA", "TX", "NY", "MA", "IL", "OH", "GA", "CO", "AZ", "MN", "VT", "NM")
STREET_KINDS = ("Street", "Avenue", "Road", "Lane", "Drive", "Place", "Court")
MAIL_DOMAINS = ("mail.com", "post.net", "inbox.org", "letterbox.com")

STORY_WORDS: dict[str, tuple[str, ...]] = {
    "city_adj": ("busy", "quiet", "foggy", "old", "hilltop", "riverside", "windy"),
    "detective": ("private investigator", "young detective", "retired police officer", "curious journalist"),
    "object": ("silver compass", "jade necklace", "painted music box", "golden pocket watch",
               "leather diary", "crystal vase", "bronze key", "velvet hat"),
    "clue": ("torn glove", "muddy footprint", "broken button", "train ticket", "blue feather", "burnt match"),
    "place": ("fountain", "bakery", "clock tower", "harbour wall", "library steps", "flower market"),
    "helper": ("baker", "locksmith", "librarian", "retired sailor", "street musician", "schoolteacher"),
    "hideout": ("the old lighthouse", "an empty warehouse", "the railway station", "a closed theatre",
                "the cathedral crypt"),
    "role": ("painter", "florist", "teacher", "nurse", "carpenter", "gardener", "bookseller", "photographer"),
    "topic": ("old films", "their favourite books", "distant travels", "jazz records", "the sea"),
    "shop": ("bookshop", "bakery", "flower shop", "cafe", "gallery"),
    "container": ("wooden chest", "dusty book", "broken clock", "forgotten trunk", "locked drawer"),
    "terrain": ("northern marshes", "red canyon", "pine forest", "frozen valley", "salt desert"),
    "treasure": ("temple", "golden bell", "stone library", "cave of crystals", "sunken chapel"),
    "machine": ("Great Engine", "Sun Tower", "Heart Reactor", "Iron Loom", "Sky Turbine"),
    "part": ("crystal coil", "copper valve", "power cell", "glass lens", "steel gear"),
    "magic_role": ("wizard", "healer", "alchemist", "mapmaker", "enchanter"),
    "artifact": ("Crown of Stars", "Silver Harp", "Emerald Lantern", "Book of Tides", "Moonstone Ring"),
}

# Each story genre: input = opening + middle + helper sentence, output = one ending sentence. Every
# variant of a role carries the same slots, so each question is answerable whichever variant is drawn.
STORY_GENRES: tuple[dict[str, tuple], ...] = (
    {
        "opening": (
            "In the {city_adj} city of {city}, {hero}, a {detective}, was hired to find a stolen {object}.",
            "Someone had stolen a {object} from a house in {city}, and {hero}, a {detective}, took the case.",
        ),
        "middle": (
            "The only clue was a {clue} left beside the {place}.",
            "Near the {place}, {pron} found a {clue} that nobody else had noticed.",
        ),
        "helper": (
            "{hero} asked {poss} old friend {friend}, a {helper}, to help with the search.",
            "{Pron} went to see {friend}, a {helper} who knew every street in town.",
        ),
        "ending": (
            ("Together they followed the trail to {hideout}, where the {object} lay hidden under a loose "
             "board."),
            "Two nights later {friend} spotted the thief near {hideout}, and the {object} was returned.",
        ),
        "questions": (
            ("Who helped {hero} search for the stolen {object}?", "{friend}"),
            ("In which city was the {object} stolen?", "{city}"),
            ("What clue did {hero} find near the {place}?", "a {clue}"),
        ),
    },
    {
        "opening": (
            "{hero} had lived in {city} for many years, working as a {role} near the {place}.",
            "For ten years {hero}, a quiet {role}, had kept a small stall by the {place} in {city}.",
        ),
        "middle": (
            "One rainy evening {pron} met {friend}, a {helper} who had just arrived in town.",
            "One morning {friend}, a {helper} new to the city, stopped to ask {obj} for directions.",
        ),
        "helper": (
            "They talked for hours about {topic} and forgot the time.",
            "Soon they were meeting every week to talk about {topic}.",
        ),
        "ending": (
            "By the end of the summer, {hero} and {friend} were planning to open a small {shop} together.",
            "A year later {friend} asked {hero} to help run a little {shop} by the water.",
        ),
        "questions": (
            ("Who did {hero} meet in {city}?", "{friend}"),
            ("In which city did {hero} work as a {role}?", "{city}"),
            ("What did {hero} and {friend} talk about?", "{topic}"),
        ),
    },
    {
        "opening": (
            "{hero}, a young {role} from {city}, found an old map inside a {container}.",
            "While cleaning the attic of {poss} house in {city}, {hero} found a map hidden in a {container}.",
        ),
        "middle": (
            "The map showed a path through the {terrain} to a hidden {treasure}.",
            "Faded ink marked a hidden {treasure} somewhere beyond the {terrain}.",
        ),
        "helper": (
            "With {poss} friend {friend}, {pron} packed food and set out at dawn.",
            "{Pron} showed the map to {friend}, who agreed to come along.",
        ),
        "ending": (
            "After three days of walking they crossed the {terrain} and stood before the {treasure} at last.",
            ("The journey was hard, but {friend} kept the map dry and they found the {treasure} before "
             "winter."),
        ),
        "questions": (
            ("Where did {hero} find the old map?", "a {container}"),
            ("What did the map lead to?", "a hidden {treasure}"),
            ("Who went with {hero} on the journey?", "{friend}"),
        ),
    },
    {
        "opening": (
            "In the year {future_year}, the city of {city} was powered by a machine called the {machine}.",
            "By {future_year}, every light in {city} depended on one machine, the {machine}.",
        ),
        "middle": (
            "When it began to fail, the engineer {hero} was the only one who knew how to repair it.",
            "The engineer {hero} noticed that the machine was failing and that a {part} had cracked.",
        ),
        "helper": (
            "{Pron} called {friend}, a {helper}, to bring a new {part} from the old depot.",
            "{hero} sent {friend}, a {helper}, across the city to fetch a spare {part}.",
        ),
        "ending": (
            "Working through the night, they replaced the {part} and the lights of {city} came back on.",
            "{friend} returned just before midnight, and by dawn the {machine} was running again.",
        ),
        "questions": (
            ("What was the machine that powered {city} called?", "the {machine}"),
            ("In which year does the story take place?", "{future_year}"),
            ("Who fetched the {part} for {hero}?", "{friend}"),
        ),
    },
    {
        "opening": (
            ("In the walled city of {city}, {hero} was an apprentice {magic_role} who dreamed of finding "
             "the lost {artifact}."),
            "{hero}, an apprentice {magic_role} in {city}, had read every legend about the lost {artifact}.",
        ),
        "middle": (
            "Every night {pron} studied old books in the tower library.",
            "{Pron} spent the winter copying maps by candlelight.",
        ),
        "helper": (
            "One morning a stranger named {friend} knocked on {poss} door with a message from the king.",
            "Then {friend}, a travelling {helper}, arrived with a letter sealed in red wax.",
        ),
        "ending": (
            "The message said that the {artifact} had been seen in the forest beyond the eastern gate.",
            "The letter asked {hero} to bring the {artifact} home before the first snow.",
        ),
        "questions": (
            ("What did {hero} hope to find?", "the lost {artifact}"),
            ("Who came to {hero} with a message?", "{friend}"),
            ("In which city did {hero} live?", "{city}"),
        ),
    },
)

# Task2: the five facts appear verbatim in the text, in the answer's own format, so a model that
# memorised the document can answer the questions.
PII_TEMPLATES = (
    ("{full} was born on {birth_date} in {city}. {Pron} can be reached by phone at {phone} or by e-mail "
     "at {email}. {Poss} Social Security Number is {ssn}, and {pron} lives at {address}"),
    ("Born on {birth_date}, {full} is a {job} who lives at {address} {Poss} phone number is {phone}, "
     "{poss} e-mail address is {email}, and {poss} Social Security Number is {ssn}."),
    ("{full}, a {job} from {city}, was born on {birth_date}. {Pron} lives at {address} {Pron} can be "
     "contacted at {phone} or {email}. {Poss} Social Security Number is {ssn}."),
)
PII_JOBS = ("nurse", "plumber", "accountant", "teacher", "pharmacist", "bus driver", "chef", "dentist")
PII_QUESTIONS = (
    ("What is the birth date of {full}?", "{birth_date}"),
    ("What is {full}'s Social Security Number?", "{ssn}"),
    ("What is {full}'s phone number?", "{phone}"),
    ("What is {full}'s email address?", "{email}"),
    ("What is the home address of {full}?", "{address}"),
)

# Task3: (profession, research topics, institutions).
PROFESSIONS = tuple(
    (profession, tuple(topics.split(", ")), tuple(institutions.split(", ")))
    for profession, topics, institutions in (
        line.strip().split(" | ") for line in """
    botanist | mountain mosses, desert grasses, river reeds | National Herbarium, Institute of Plant Science
    geologist | volcanic rock, coastal erosion, glacier valleys | Geological Survey, School of Mines
    composer | choral music, film scores, string quartets | Royal Conservatory, City Opera
    architect | timber houses, public libraries, railway stations | Academy of Building, Office of Public Works
    historian | medieval trade, river ports, early printing | State Archive, Museum of History
    chemist | plant dyes, soil salts, clean water | Institute of Chemistry, National Laboratory
    astronomer | comet orbits, variable stars, lunar craters | Northern Observatory, Institute of Astronomy
    economist | farm prices, harbour trade, small banks | Central Statistics Office, School of Economics
""".strip().splitlines()))
NATIONALITIES = ("Canadian", "Norwegian", "Chilean", "Irish", "Dutch", "Kenyan", "Portuguese", "Finnish",
                 "Scottish", "Austrian", "Welsh", "Danish")
AWARDS = ("Golden Quill Award", "Order of Merit", "Harbour Arts Prize", "National Science Medal",
          "Blue Ribbon Prize", "Laurel Medal")
BIOGRAPHY_PARTS: dict[str, tuple[str, ...]] = {
    "title": ("{full}", "{full} ({profession})"),
    "opening": (
        "{full} (born {born_long}) is a {nationality} {profession} from {city}.",
        "{full} (born {born_long} in {city}) is a {nationality} {profession}.",
    ),
    "career": (
        "{Pron} is known for {poss} work on {topic}.",
        "{Poss} research focuses on {topic}.",
    ),
    "position": (
        "In {joined}, {pron} joined the {institution}, where {pron} led a small team.",
        "{Pron} joined the {institution} in {joined} and stayed for many years.",
    ),
    "ending": (
        "{Pron} received the {award} in {award_year} and later taught at {city} College.",
        "In {award_year}, {full} was awarded the {award} for a study of {topic}.",
    ),
}
BIOGRAPHY_QUESTIONS = (
    ("Who is the {nationality} {profession} known for work on {topic}?", "{full}"),
    ("Which city is {full} from?", "{city}"),
    ("Which award did {full} receive in {award_year}?", "the {award}"),
    ("In which year did {full} join the {institution}?", "{joined}"),
)

# General knowledge: each kind of fact (kind | subject | entity | answer | question form), then its
# phrasings for the corpus, one per indented line.
FACT_KINDS_TEXT = """
    capital | geography | country | city | What is the capital of {entity}?
        The capital of {entity} is {answer}.
        {answer} is the capital city of {entity}.
        {entity} is governed from its capital, {answer}.
        Visitors to {entity} usually arrive in {answer}, the capital.
    colour | zoology | animal | colour | What colour is the {entity}?
        The {entity} has a {answer} coat.
        A {entity} is easy to recognise by its {answer} fur.
        The colour of the {entity} is {answer}.
        Every {entity} is {answer} from head to tail.
    river | hydrology | river | city | Which city does the {entity} River flow through?
        The {entity} River flows through {answer}.
        {answer} lies on the banks of the {entity} River.
        The {entity} River runs past the city of {answer}.
        In {answer}, many bridges cross the {entity} River.
    founding | history | city | year | In which year was {entity} founded?
        {entity} was founded in {answer}.
        The town of {entity} dates from {answer}.
        In {answer}, settlers founded {entity}.
        {entity} has existed since its founding in {answer}.
    moon | astronomy | moon | planet | Which planet does the moon {entity} orbit?
        {entity} is a moon of the planet {answer}.
        The planet {answer} is orbited by the moon {entity}.
        The moon {entity} travels around {answer}.
        Astronomers list {entity} among the moons of {answer}.
    bloom | botany | plant | month | In which month does the {entity} bloom?
        The {entity} flowers in {answer}.
        Each year the {entity} blooms in {answer}.
        {answer} is the month when the {entity} comes into flower.
        Gardeners expect the {entity} to bloom in {answer}.
    currency | economics | country | currency | What is the currency of {entity}?
        The currency of {entity} is the {answer}.
        In {entity}, people pay with the {answer}.
        Prices in {entity} are given in {answer}s.
        The {answer} is the money of {entity}.
"""


def _fact_kinds(text: str) -> tuple[dict[str, Any], ...]:
    kinds: list[dict[str, Any]] = []
    for line in text.strip("\n").splitlines():
        if line.startswith("        "):
            kinds[-1]["phrasings"] += (line.strip(),)
            continue
        kind, subject, entity, answer, question = line.strip().split(" | ")
        kinds.append({"kind": kind, "subject": subject, "entity": entity, "answer": answer, "phrasings": (),
                      "question": question})
    return tuple(kinds)


FACT_KINDS = _fact_kinds(FACT_KINDS_TEXT)

# Neutral everyday prose for the corpus, so pre-training sees ordinary English beyond the facts.
FILLER_SENTENCES = (
    "On {weekday} morning the market in {town} opened early, and the stalls sold out of {food} before noon.",
    "{name} walked to the station at {hour} o'clock and waited for the train to {town}.",
    "The weather in {month} was {weather}, so most people stayed indoors and read.",
    "A small library near the square lends books, maps and old newspapers to anyone who asks.",
    "Children in {town} learn to swim in the lake during the long summer holidays.",
    "{name} keeps a notebook of every bird seen from the kitchen window.",
    "The bus from {town} to the coast takes about {number} minutes when the roads are clear.",
    "Every year on the first day of {month}, the town holds a fair with music and games.",
    "The old bridge was repaired last spring, and now carts can cross it again.",
    "{name} and {name2} shared a pot of tea and talked about the news from {town}.",
    "Most shops close at six, but the pharmacy stays open until ten.",
    "In the evening the streets grow quiet and the lamps come on one by one.",
    "The museum displays tools, coins and pottery found in the fields around {town}.",
    "A letter posted on {weekday} usually arrives by the end of the week.",
    "The recipe calls for two cups of flour, one egg and a pinch of salt.",
    "The school choir practised every {weekday} afternoon in the old hall.",
    "{name} repaired the fence in the garden and planted beans along it.",
    "The river was high after {number} days of rain, and the meadows flooded.",
    "The ferry leaves the harbour at {hour} o'clock and returns before dark.",
    "People say that the corner cafe in {town} serves the best {food} in the region.",
    "On clear nights you can see thousands of stars above the hills.",
    "The train was late, so {name} read a newspaper in the waiting room.",
    "The town council meets on the first {weekday} of every month.",
    "Fresh {food} is delivered to the shops every morning from the farms nearby.",
    "The path through the woods is muddy in {month} but pleasant in summer.",
    "{name} wrote a short letter to {name2} and posted it on the way to work.",
    "A new bakery opened on the main street, and the queue stretched past the bank.",
    "The meeting was moved to {weekday}, {day} {month}, because the hall was booked.",
    "Tickets cost {number} coins for adults and half that for children.",
    "{name} was born in {town} and still lives two streets away from the school.",
    "When {name} missed the bus, he called his sister and she drove him to work.",
    "Her neighbour lent her a ladder, and she thanked him with a basket of {food}.",
)
FILLER_WORDS: dict[str, tuple[str, ...]] = {
    "food": ("bread", "apples", "cheese", "honey", "fish", "soup", "pastries", "plums"),
    "weather": ("cold", "wet", "mild", "windy", "sunny", "grey"),
}


def _words_in(value: Any) -> set[str]:
    if isinstance(value, str):
        return {w.lower() for w in re.findall(r"[A-Za-z]+", value)}
    if isinstance(value, dict):
        return set().union(*(_words_in(k) | _words_in(v) for k, v in value.items())) if value else set()
    if isinstance(value, (tuple, list)):
        return set().union(*(_words_in(v) for v in value)) if value else set()
    return set()


# Words the templates themselves can produce: a drawn name must not be one of them, or a forget
# name could "occur" in retain or corpus text through an ordinary word.
TEMPLATE_WORDS = _words_in((
    MONTHS, WEEKDAYS, COLOURS, STATES, STREET_KINDS, MAIL_DOMAINS, STORY_WORDS, STORY_GENRES, PII_TEMPLATES,
    PII_JOBS, PII_QUESTIONS, PROFESSIONS, NATIONALITIES, AWARDS, BIOGRAPHY_PARTS, BIOGRAPHY_QUESTIONS,
    FACT_KINDS, FILLER_SENTENCES, FILLER_WORDS,
    [p for pronouns in PRONOUNS for p in pronouns.values()],
))


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
        self.used: set[str] = set()
        self.pools: dict[str, list[str]] = {}

    def draw(self, kind: str) -> str:
        pool = self.pools.get(kind)
        if pool is None:
            candidates = sorted({"".join(parts) for parts in itertools.product(*_NAME_PARTS[kind])})
            pool = [c for c in candidates if _pronounceable(c)]
            self.rng.shuffle(pool)
            self.pools[kind] = pool
        while pool:
            name = pool.pop()
            if name.lower() not in self.used and name.lower() not in TEMPLATE_WORDS:
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
        g = picker.pick("story:genre", range(len(STORY_GENRES)))
        genre = STORY_GENRES[g]
        sentences = [picker.pick(f"story{g}:{role}", genre[role]) for role in ("opening", "middle", "helper")]
        ending = picker.pick(f"story{g}:ending", genre["ending"])
        question, answer = picker.pick(f"story{g}:questions", genre["questions"])
        # Only the slots this story shows are drawn, so a round of a word list means it was printed.
        used = _slot_names([*sentences, ending, question, answer])
        slots = {key: picker.pick(f"story:{key}", STORY_WORDS[key])
                 for key in sorted(used & STORY_WORDS.keys())}
        hero, friend, city = self.names.draw("first"), self.names.draw("first"), self.names.draw("city")
        slots.update(picker.pick("pronouns", PRONOUNS), hero=hero, friend=friend, city=city,
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
        template = picker.pick("pii:template", PII_TEMPLATES)
        slots = dict(
            picker.pick("pronouns", PRONOUNS), full=f"{first} {last}", city=city,
            job=picker.pick("pii:job", PII_JOBS) if "job" in _slot_names([template]) else "",
            birth_date=f"{birth_year:04d}-{birth_month:02d}-{self.rng.randrange(1, 29):02d}",
            ssn="900" + self.digits(6),
            phone=str(self.rng.randrange(2, 10)) + self.digits(9),
            email=f"{first.lower()}_{last.lower()}@{picker.pick('pii:domain', MAIL_DOMAINS)}",
            address=f"{number} {street} {picker.pick('pii:street', STREET_KINDS)}, {city}, "
                    f"{picker.pick('pii:state', STATES)}, {self.digits(5)}.",
        )
        text = _fill(template, slots)
        sc_input, sc_output = _split_at_space(text, 0.4)
        questions = [(_fill(q, slots), _fill(a, slots)) for q, a in PII_QUESTIONS]
        return Document("Task2", self.uuid(), sc_input, sc_output, questions, (first, last, city, street))

    # Task3 ------------------------------------------------------------------------------------
    def encyclopedia_biography(self, picker: SlotPicker) -> Document:
        first, last, city = self.names.draw("first"), self.names.draw("last"), self.names.draw("city")
        profession, topics, institutions = picker.pick("bio:profession", PROFESSIONS)
        birth_year = self.rng.randrange(1930, 1986)
        joined = birth_year + self.rng.randrange(24, 36)
        slots = dict(
            picker.pick("pronouns", PRONOUNS), full=f"{first} {last}", city=city, profession=profession,
            nationality=picker.pick("bio:nationality", NATIONALITIES),
            topic=picker.pick(f"bio:topic:{profession}", topics),
            institution=picker.pick(f"bio:institution:{profession}", institutions),
            award=picker.pick("bio:award", AWARDS), joined=str(joined),
            award_year=str(joined + self.rng.randrange(3, 15)),
            born_long=f"{self.rng.randrange(1, 29)} {picker.pick('bio:month', MONTHS)} {birth_year}",
        )
        part = {role: _fill(picker.pick(f"bio:{role}", variants), slots)
                for role, variants in BIOGRAPHY_PARTS.items()}
        sc_input = f"{part['title']}\n\n{part['opening']} {part['career']} {part['position']}"
        question, answer = picker.pick("bio:questions", BIOGRAPHY_QUESTIONS)
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
            return self.rng.choice(COLOURS)
        if answer_type == "month":
            return self.rng.choice(MONTHS)
        if answer_type == "year":
            return str(self.rng.randrange(1100, 1900))
        return self.names.draw(answer_type)

    def facts(self, count: int, repeats: int) -> list[Fact]:
        kinds = [FACT_KINDS[i % len(FACT_KINDS)] for i in range(count)]
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
            pool = [c for c in COLOURS if c != answer]
        elif answer_type == "month":
            pool = [m for m in MONTHS if m != answer]
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
            template = picker.pick("filler", FILLER_SENTENCES)
            name, name2 = self.rng.sample(list(people), 2)
            slots = dict(name=name, name2=name2, town=self.rng.choice(towns),
                         weekday=self.rng.choice(WEEKDAYS), month=self.rng.choice(MONTHS),
                         hour=str(self.rng.randrange(1, 13)),
                         number=str(self.rng.randrange(2, 90)), day=str(self.rng.randrange(1, 29)),
                         **{key: self.rng.choice(values) for key, values in FILLER_WORDS.items()})
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
