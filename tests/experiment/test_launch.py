"""Multi-process launches without accelerate's traps: the precision a launch was given is the one used,
and a notebook that builds its world before launching several processes can still launch them."""

from __future__ import annotations

import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from methods.engine.trainer import LAUNCHER_PRECISION, launch_precision

REPO = Path(__file__).resolve().parents[2]

# For the scripts launched below (at their indentation): generate_greedy wrapped to print how many prompts
# each process got.
# Each launched process records to a file of its own: what two processes print to one pipe can go missing.
COUNT_PROMPTS = textwrap.indent(textwrap.dedent("""
    whole = generation.generate_greedy

    def record(text):
        with open(os.path.join(RECORDS, "rank" + os.environ["RANK"]), "a") as handle:
            handle.write(text + "\\n")

    def counted(model, tokenizer, prompts, **kwargs):
        record("PROMPTS " + str(len(prompts)))
        return whole(model, tokenizer, prompts, **kwargs)
"""), " " * 8).strip()


def records(folder) -> dict[str, list[str]]:
    """{rank: the lines it recorded} from the files COUNT_PROMPTS's `record` writes."""
    return {path.name.removeprefix("rank"): path.read_text().splitlines() for path in sorted(folder.glob("rank*"))}


def test_the_launch_decides_the_precision_and_a_plain_process_takes_the_config():
    assert launch_precision("bf16", {}, cuda=True) == ("bf16", "")
    chosen, note = launch_precision("bf16", {LAUNCHER_PRECISION: "fp16"}, cuda=True)
    assert chosen is None and "launched with fp16" in note and "training.mixed_precision is bf16" in note
    assert launch_precision("bf16", {LAUNCHER_PRECISION: "bf16"}, cuda=True) == (None, "")
    assert launch_precision("bf16", {LAUNCHER_PRECISION: "bf16"}, cuda=False) == ("no", "")


def test_a_notebook_builds_its_world_then_launches_two_processes(small_world, tmp_path):
    """The SUGD notebook's steps with num_processes=2 on CPU: the world (its gold standard missing, so
    training is needed) is built in a child process, so the notebook's own process holds no accelerate
    state and notebook_launcher (which refuses otherwise) runs the unlearning on 2 processes to the end."""
    world = tmp_path / "world"
    shutil.copytree(small_world.root, world)
    shutil.rmtree(world / "gold_standard")
    overrides = [*small_world.overrides, "training.epochs=1", "training.batch_size=4", "method.chunk_size=10",
                 "adapter.kind=lora", "adapter.lora_rank=4", "evaluation.subset=1"]
    script = textwrap.dedent(f"""
        from utils.experiment import Experiment

        experiment = Experiment.from_config({str(REPO / 'configs' / 'sugd.yaml')!r},
                                            [f"workdir={world!s}", *{overrides!r}], {str(tmp_path / 'run')!r})
        report = experiment.prepare(progress=False, isolated=True)
        assert report["gold_standard"]["retain"]["regurgitation"] > 0.5
        # notebook_launcher refuses to start when this process already holds an accelerate state.
        results = experiment.run(progress=False, num_processes=2)
        print("FINAL", results["final_score"])
    """)
    completed = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, capture_output=True, text=True,
                               timeout=600, check=False)
    assert completed.returncode == 0, completed.stdout[-3000:] + completed.stderr[-3000:]
    assert "FINAL" in completed.stdout and (world / "gold_standard" / "model.safetensors").is_file()
    assert (tmp_path / "run" / "results.json").is_file()


def test_evaluation_split_over_two_processes_equals_one(small_world, tmp_path):
    """`unlearn evaluate`'s path under a launcher of 2 CPU processes: each process scores half the items, MIA
    documents and utility questions, and the gathered evaluation is the one-process evaluation."""
    import json

    from utils.experiment import Experiment

    overrides = [*small_world.overrides, f"workdir={small_world.root}", "evaluation.batch_size=4",
                 "evaluation.nll_batch_size=3"]
    alone = Experiment.from_config(None, overrides).evaluate_checkpoint(str(small_world.target), tmp_path / "one",
                                                                       progress=False)
    script = textwrap.dedent(f"""
        import os

        from accelerate import notebook_launcher

        import utils.evaluation.generation as generation
        from utils.experiment import Experiment

        RECORDS = {str(tmp_path)!r}
        {COUNT_PROMPTS}
        def evaluate():
            generation.generate_greedy = counted
            Experiment.from_config(None, {overrides!r}).evaluate_checkpoint(
                {str(small_world.target)!r}, {str(tmp_path / 'two')!r}, progress=False)

        notebook_launcher(evaluate, num_processes=2)
    """)
    completed = subprocess.run([sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True,
                               timeout=600, check=False)
    assert completed.returncode == 0, completed.stdout[-3000:] + completed.stderr[-3000:]
    # Each process generated for half of the items, not all of them.
    items = sum(sum(kinds.values()) for tasks in alone["counts"].values() for kinds in tasks.values())
    assert items > 20
    assert records(tmp_path) == {"0": [f"PROMPTS {(items + 1) // 2}"], "1": [f"PROMPTS {items // 2}"]}
    shared = json.loads((tmp_path / "two" / "results.json").read_text())
    for split in ("forget", "retain"):
        one = (tmp_path / "one" / f"{split}_generations.jsonl").read_text()
        assert (tmp_path / "two" / f"{split}_generations.jsonl").read_text() == one
    assert shared["terms"] == alone["terms"] and shared["task_aggregate"] == alone["task_aggregate"]
    assert shared["utility"] == alone["utility"] and shared["utility"]["score"] > 0
    for key in ("final_score", "mia_auc"):
        assert abs(shared[key] - alone[key]) < 1e-9, (key, shared[key], alone[key])
    assert shared["mia_attacks"].keys() == alone["mia_attacks"].keys()
    member_one = json.loads((tmp_path / "one" / "mia_nll.json").read_text())["member"]
    member_two = json.loads((tmp_path / "two" / "mia_nll.json").read_text())["member"]
    assert max(abs(a - b) for a, b in zip(member_one, member_two)) < 1e-5


def test_the_quick_check_is_split_over_two_processes_and_equals_one(small_world, tmp_path):
    """The per-chunk quick check (split_means) under 2 launched processes: each generates half the prompts,
    and both get the one-process means (no process idles at a barrier while the main one checks alone)."""
    from utils.data.lume import load_lume
    from utils.evaluation.evaluate import split_means
    from utils.models.loading import load_model_and_tokenizer

    lume = load_lume(small_world.root / "data" / "data", "validation")
    items = lume.forget + lume.retain
    model, tokenizer = load_model_and_tokenizer(str(small_world.target))
    alone = split_means(model, tokenizer, items, 16, 4)
    assert 0 < alone["regurgitation"] <= 1 and len(items) > 10
    script = textwrap.dedent(f"""
        import json, os

        from accelerate import PartialState, notebook_launcher

        import utils.evaluation.generation as generation
        from utils.data.lume import load_lume
        from utils.evaluation.evaluate import split_means
        from utils.evaluation.sharding import Shards
        from utils.models.loading import load_model_and_tokenizer

        RECORDS = {str(tmp_path)!r}
        {COUNT_PROMPTS}
        def check():
            generation.generate_greedy = counted
            lume = load_lume({str(small_world.root / "data" / "data")!r}, "validation")
            model, tokenizer = load_model_and_tokenizer({str(small_world.target)!r})
            means = split_means(model, tokenizer, lume.forget + lume.retain, 16, 4,
                                shards=Shards.of(PartialState(cpu=True)))
            record("MEANS " + json.dumps(means))

        notebook_launcher(check, num_processes=2)
    """)
    completed = subprocess.run([sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True,
                               timeout=600, check=False)
    assert completed.returncode == 0, completed.stdout[-3000:] + completed.stderr[-3000:]
    import json

    recorded = records(tmp_path)
    assert sorted(recorded) == ["0", "1"]
    assert [recorded[rank][0] for rank in ("0", "1")] == [f"PROMPTS {(len(items) + 1) // 2}",
                                                          f"PROMPTS {len(items) // 2}"]
    means = [json.loads(recorded[rank][1].removeprefix("MEANS ")) for rank in ("0", "1")]
    assert all(m == pytest.approx(alone, abs=1e-12) for m in means)


def test_a_sharding_engine_is_refused_in_one_line():
    """Under FSDP or DeepSpeed the loop's per-phase optimiser and one-process checkpoints would not hold:
    the launch is refused before any model loads, naming what works."""
    import pytest

    from methods.engine.trainer import check_engine
    from utils.errors import UserError

    class Launched:
        def __init__(self, engine):
            self.distributed_type = engine

    check_engine(Launched("DistributedType.MULTI_GPU"))
    check_engine(Launched("MULTI_CPU"))
    for engine in ("DistributedType.FSDP", "DEEPSPEED"):
        with pytest.raises(UserError, match="which this training loop does not support.*launch with DDP"):
            check_engine(Launched(engine))


def test_a_process_that_fails_on_its_share_stops_every_process_with_its_reason(monkeypatch):
    """Every process reaches the gather, the failed one included, and each then raises the first failure:
    none waits for ever for a process that has given up."""
    import pytest

    from utils.errors import UserError
    from utils.evaluation.sharding import Shards

    reached = []

    def gather_object(objects):
        reached.append(objects)
        # What process 1 of 2 sent: its share failed.
        return [*objects, ([], [], "MIA document 3 has fewer than 2 tokens: its loss is undefined")]

    monkeypatch.setattr("accelerate.utils.gather_object", gather_object)
    with pytest.raises(UserError, match="process 1 of 2 could not evaluate its share: MIA document 3"):
        Shards(rank=0, world=2).map(lambda part, warn: [len(text) for text in part], ["a", "bb", "ccc"], print)
    assert reached == [[([1, 3], [], None)]]

    def broken(part, warn):
        raise RuntimeError("CUDA out of memory")

    reached.clear()
    with pytest.raises(UserError, match="process 0 of 2 could not evaluate its share: RuntimeError: CUDA out of"):
        Shards(rank=0, world=2).map(broken, ["a", "bb"], print)
    assert reached == [[([], [], "RuntimeError: CUDA out of memory")]]
