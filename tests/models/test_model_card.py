"""Model folders carry a model card (README.md: base model, method, settings, scores, how to load), and
`model.revision` reaches from_pretrained for a hub model, is refused for a local folder, and a run saved
before the key existed still resumes."""

from __future__ import annotations

import json
import re

import pytest
import torch
import yaml
from safetensors.torch import load_file

from utils.config import load_config, save_config
from utils.errors import UserError
from utils.models.loading import load_model_and_tokenizer
from utils.models.model_card import run_card

from ..experiment.test_run import CONFIG, RUN_OVERRIDES

pytestmark = pytest.mark.usefixtures("one_thread")

HUB_MODEL = "allenai/OLMo-1B-0724-hf"


def front_matter_and_body(card: str) -> tuple[dict, str]:
    match = re.fullmatch(r"---\n(.*?)\n---\n(.*)", card, flags=re.DOTALL)
    assert match, card[:200]
    return yaml.safe_load(match.group(1)), match.group(2)


def metric(front: dict, name: str) -> float:
    (entry,) = front["model-index"]
    (result,) = entry["results"]
    return next(m["value"] for m in result["metrics"] if m["type"] == name)


def python_blocks(body: str) -> list[str]:
    return re.findall(r"```python\n(.*?)```", body, flags=re.DOTALL)


@pytest.fixture(scope="module")
def finished(small_world, tmp_path_factory):
    """One evaluated SUGD run (a single chunk: the card is the subject here, not the unlearning)."""
    from utils.experiment import Experiment

    out = tmp_path_factory.mktemp("card") / "sugd"
    overrides = [*small_world.overrides, f"workdir={small_world.root}", *RUN_OVERRIDES, "method.chunk_size=20"]
    experiment = Experiment.from_config(str(CONFIG), overrides, out)
    results = experiment.run(progress=False, log=lambda _: None)
    return experiment, results


def test_a_finished_runs_model_folder_has_a_card_with_its_scores(small_world, finished):
    experiment, results = finished
    folder = experiment.run_dir / "model"
    on_disk = json.loads((experiment.run_dir / "results.json").read_text())
    assert isinstance(on_disk["final_score"], float) and results["final_score"] == on_disk["final_score"]
    front, body = front_matter_and_body((folder / "README.md").read_text())
    # The start model is a local folder: named in the text, kept out of `base_model` (a hub id field).
    assert "base_model" not in front and f"unlearned from `{small_world.target}`" in body
    assert front["library_name"] == "transformers" and front["tags"] == ["unlearning", "lume", "sugd"]
    assert "`sugd` method" in body and "| `method.chunk_size` | 20 |" in body
    assert "| `training.learning_rate` | 0.01 |" in body and "LoRA rank 4" in body
    # The scores: exact in the front matter, rounded in the table; the utility names its benchmark.
    assert metric(front, "final_score") == on_disk["final_score"]
    assert metric(front, "mia_auc") == on_disk["mia_auc"]
    assert f"| final score | {on_disk['final_score']:.4f} |" in body
    assert f"| utility ({on_disk['utility']['benchmark']}) | {on_disk['utility']['score']:.4f} |" in body
    assert f"| transformers | {on_disk['environment']['transformers']} |" in body

    # The snippet loads the folder as written, with plain transformers.
    snippet = python_blocks(body)[0]
    assert f'AutoModelForCausalLM.from_pretrained("{folder.resolve()}")' in snippet
    scope: dict = {}
    exec(snippet, scope)  # noqa: S102 (the card's own code, run as a reader would)
    saved = load_file(folder / "model.safetensors")
    name, tensor = next(iter(saved.items()))
    assert torch.equal(scope["model"].state_dict()[name], tensor)
    assert scope["tokenizer"]("Mira painted")["input_ids"]
    # And with the project's loader, the README changes nothing about what loads.
    model, tokenizer = load_model_and_tokenizer(str(folder))
    assert torch.equal(model.state_dict()[name], tensor) and tokenizer.pad_token is not None


def test_a_card_without_evaluation_says_so_and_an_adapter_folder_loads_with_peft(finished, tmp_path):
    experiment, _ = finished
    folder = tmp_path / "run" / "model"
    folder.mkdir(parents=True)
    card = run_card(folder, experiment.config, HUB_MODEL)
    front, body = front_matter_and_body(card)
    assert front["base_model"] == HUB_MODEL and "model-index" not in front
    assert "Not evaluated when this card was written" in body and "final score" not in body
    # An adapter kept separate (adapter.merge_at_end: false) is loaded through peft.
    (folder / "adapter_config.json").write_text(json.dumps({"base_model_name_or_path": HUB_MODEL}))
    front, body = front_matter_and_body(run_card(folder, experiment.config, HUB_MODEL, {"final_score": None}))
    assert front["library_name"] == "peft" and "AutoPeftModelForCausalLM.from_pretrained" in body


def test_the_prepared_worlds_models_carry_cards(small_world):
    for stage, words in (("target", "memorised the mini-LUME forget and retain sets"),
                         ("gold_standard", "on the retain set only")):
        front, body = front_matter_and_body((small_world.root / stage / "README.md").read_text())
        assert front["tags"][:2] == ["unlearning", "lume"] and f"# Tiny world: {stage}" in body
        assert words in body and f"It started from `{small_world.root / 'pretrained'}`" in body
        stage_info = json.loads((small_world.root / stage / "stage.json").read_text())
        assert f"| steps | {stage_info['steps']} |" in body
        assert f"| `prepare.{stage}.epochs` | 60 |" in body  # conftest's SMALL_WORLD_OVERRIDES


@pytest.fixture()
def recorded_loads(small_world, monkeypatch):
    """from_pretrained of both Auto classes records (name, revision) and loads the small world's target:
    the hub is never reached."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    calls = []
    real_model, real_tokenizer = AutoModelForCausalLM.from_pretrained, AutoTokenizer.from_pretrained

    def model(name, **kwargs):
        calls.append(("model", name, kwargs.pop("revision", None)))
        return real_model(str(small_world.target), **kwargs)

    def tokenizer(name, **kwargs):
        calls.append(("tokenizer", name, kwargs.pop("revision", None)))
        return real_tokenizer(str(small_world.target), **kwargs)

    monkeypatch.setattr(AutoModelForCausalLM, "from_pretrained", model)
    monkeypatch.setattr(AutoTokenizer, "from_pretrained", tokenizer)
    return calls


def test_model_revision_reaches_both_from_pretrained_calls(small_world, recorded_loads):
    from utils.experiment import Experiment

    config = small_world.config(f"model.name_or_path={HUB_MODEL}", "model.revision=step1000-tokens4B")
    experiment = Experiment(config)
    experiment.load(experiment.start_model, config.model.tokenizer)
    assert recorded_loads == [("model", HUB_MODEL, "step1000-tokens4B"), ("tokenizer", HUB_MODEL, "step1000-tokens4B")]
    # A tokenizer from another repository is not at the model's revision; no revision, no revision passed.
    recorded_loads.clear()
    load_model_and_tokenizer(HUB_MODEL, "allenai/other-tokenizer", revision="v1")
    load_model_and_tokenizer(HUB_MODEL)
    assert recorded_loads == [("model", HUB_MODEL, "v1"), ("tokenizer", "allenai/other-tokenizer", None),
                              ("model", HUB_MODEL, None), ("tokenizer", HUB_MODEL, None)]


def test_a_revision_for_a_local_folder_is_refused_in_one_line(small_world):
    from utils.experiment import Experiment

    with pytest.raises(UserError, match=r"^revision 'main' applies to hub models only; .*target is a local folder"):
        load_model_and_tokenizer(str(small_world.target), revision="main")
    with pytest.raises(UserError, match="must name a branch, tag or commit"):
        load_model_and_tokenizer(HUB_MODEL, revision=" ")
    # The prepared world's target is a folder: model.revision there is a mistake, said before any load.
    experiment = Experiment(small_world.config("model.revision=main"))
    with pytest.raises(UserError, match="applies to hub models only") as caught:
        experiment.load(experiment.start_model)
    assert "\n" not in str(caught.value)
    # Another checkpoint evaluated under that config is not the configured model: no revision for it.
    model, _ = experiment.load(str(small_world.gold_standard))
    assert model.config.vocab_size > 0


def test_a_run_saved_before_model_revision_existed_still_resumes(small_world, tmp_path):
    from utils.experiment.run import check_resumable

    config = small_world.config(*RUN_OVERRIDES)
    save_config(config, tmp_path / "config.yaml")
    saved = yaml.safe_load((tmp_path / "config.yaml").read_text())
    assert saved["model"].pop("revision") is None
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(saved, sort_keys=False))
    check_resumable(config, tmp_path)  # the missing key ran at its default: the same run
    with pytest.raises(UserError, match=r"different model\.revision"):
        check_resumable(small_world.config(*RUN_OVERRIDES, "model.revision=v2"), tmp_path)


def test_a_config_file_names_a_revision(tmp_path):
    path = tmp_path / "real.yaml"
    path.write_text(f"model:\n  name_or_path: {HUB_MODEL}\n  revision: '1234567'\n")
    assert load_config(path).model.revision == "1234567"
