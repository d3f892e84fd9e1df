"""The real user's first GPU day, rehearsed on a CPU with stand-in checkpoints.

Stand-ins differ from the organisers' checkpoints only in size: an `OlmoForCausalLM` (OLMo 1) with the real
OLMo tokenizer, saved in the `from_pretrained` layout, a *target* that memorised a slice of the real LUME
validation split (the first documents of each task), a *gold standard* trained on the slice's retain part only,
and the *base* model both start from; beside them the slice in the official parquet layout with its MIA
documents, and an MMLU folder of two of the real subjects (the layout `mmlu:DIR` reads).

Then, from `notebooks/` as the current folder, papermill runs SUGD, AGAD and Gold-Standard with
`config_path=configs/olmo-7b/<method>.yaml` and string parameters that change only where the models and the
data are, the split and the epoch budget, on 2 processes, as a GPU user would run them with the real names:

    python scripts/olmo_assets.py                  # the real tokenizer and MMLU, once
    python benchmarks/journey.py --out /tmp/journey

`tests/experiment/test_journey.py` runs it and checks what a user would look at. The overrides a GPU user keeps or
replaces are printed by `--show-overrides` (docs/real-models-and-gpus.md).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from benchmarks import common
from benchmarks.common import REAL_DATA

NOTEBOOKS = {"SUGD": "sugd", "AGAD": "agad", "Gold-Standard": "gold_standard"}
MMLU_SUBJECTS = ("abstract_algebra", "anatomy")
# Deep enough for last_k: 8 (the 7B configs' trainable part), narrow enough to train in seconds: with the real
# 50,304-row vocabulary the output layer is most of the compute.
STANDIN_SHAPE = ["model.tiny.hidden_size=32", "model.tiny.num_layers=8", "model.tiny.num_heads=2",
                 "model.tiny.intermediate_size=128", "model.tiny.max_position_embeddings=512"]
# One pass of pre-training on a small general corpus, then the slice memorised at a high learning rate: the loss
# on the answers and the last 96 tokens of each text, which is what the scores read and a fraction of the compute.
STANDIN_TRAINING = ["synthetic.general_facts=8", "synthetic.mia_nonmembers=4",
                    "prepare.pretrain.epochs=1", "prepare.pretrain.learning_rate=1e-2", "prepare.pretrain.warmup_steps=2",
                    *(f"prepare.{stage}.{key}" for stage in ("target", "gold_standard")
                      for key in ("epochs=40", "learning_rate=1e-2", "warmup_steps=5", "loss_on=output",
                                  "max_length=96"))]


def write_slice(source: Path, out: Path, documents_per_task: int) -> Path:
    """The first `documents_per_task` documents of each task and split of the real validation split, in the
    official parquet layout, and the MIA documents of its forget Task3 documents against as many non-members."""
    import pandas as pd

    from utils.data.lume import load_lume
    from utils.io import read_jsonl, write_jsonl

    lume = load_lume(source, "validation")
    mia_source = source / "mia_data" / "validation"
    member_rows = [row for _, row in read_jsonl(mia_source / "member.jsonl")]
    member_documents = {row["id"][:-3] for row in member_rows}
    (out / "data").mkdir(parents=True, exist_ok=True)
    kept_forget: set[str] = set()
    for split, items in (("forget", lume.forget), ("retain", lume.retain)):
        documents: dict[str, list[str]] = {}
        for item in items:
            # The MIA members are forget Task3 documents: two of them, so the AUC compares more than one pair.
            members_only = split == "forget" and item.task == "Task3"
            wanted = max(documents_per_task, 2) if members_only else documents_per_task
            chosen = documents.setdefault(item.task, [])
            if members_only and item.document_id not in member_documents:
                continue
            if item.document_id not in chosen and len(chosen) < wanted:
                chosen.append(item.document_id)
        keep = {doc for docs in documents.values() for doc in docs}
        if split == "forget":
            kept_forget = keep
        rows = [{"id": i.id, "input": i.input, "output": i.output, "task": i.task, "split": split}
                for i in items if i.document_id in keep]
        pd.DataFrame(rows).to_parquet(out / "data" / f"{split}_validation-00000-of-00001.parquet", index=False)
    members = [row for row in member_rows if row["id"][:-3] in kept_forget]
    nonmembers = [row for _, row in read_jsonl(mia_source / "nonmember.jsonl")][:len(members)]
    (out / "mia_data" / "validation").mkdir(parents=True, exist_ok=True)
    write_jsonl(out / "mia_data" / "validation" / "member.jsonl", members)
    write_jsonl(out / "mia_data" / "validation" / "nonmember.jsonl", nonmembers)
    return out


def standin_folder() -> Path:
    """Where the tests keep the stand-ins between runs: `$LUME_STANDINS`, else beside the OLMo assets."""
    from utils.data.olmo_assets import assets_dir

    return Path(os.environ.get("LUME_STANDINS") or assets_dir().parent / "journey-standins")


def build_standins(out: Path, documents_per_task: int = 1, log=print) -> dict[str, Path]:
    """The stand-in checkpoints, data and MMLU under `out` (reused when complete)."""
    from utils.data.olmo_assets import find_assets, missing_reason
    from utils.errors import UserError
    from utils.experiment import Experiment

    assets = find_assets()
    if assets is None:
        raise UserError(missing_reason())
    if not (REAL_DATA / "data").is_dir():
        raise UserError(f"the real LUME validation split is not in {REAL_DATA}")
    paths = {"data": out / "lume-slice", "world": out / "world", "mmlu": out / "mmlu"}
    if not (paths["data"] / "mia_data").is_dir():
        write_slice(REAL_DATA, paths["data"], documents_per_task)
    if not paths["mmlu"].is_dir():
        for subject in MMLU_SUBJECTS:
            shutil.copytree(assets / "mmlu" / subject, paths["mmlu"] / subject)
    world = Experiment.from_config(REPO / "configs" / "olmo-shaped" / "world.yaml",
                                   [*STANDIN_SHAPE, *STANDIN_TRAINING, f"workdir={paths['world']}",
                                    f"data.path={paths['data']}", "evaluation.max_new_tokens=32",
                                    f"evaluation.utility=mmlu:{paths['mmlu']}"])
    report = world.prepare(progress=False, log=log)
    paths.update(target=paths["world"] / "target", gold_standard=paths["world"] / "gold_standard",
                 base=paths["world"] / "pretrained")
    paths["report"] = paths["world"] / "prepare_report.json"
    log(f"[journey] stand-ins: target forget {report['target']['forget']}, "
        f"gold standard forget {report['gold_standard']['forget']}")
    return paths


def overrides_for(method: str, standins: dict[str, Path], epochs: float) -> list[str]:
    """What a GPU user replaces with the real names (the model, its tokenizer, the gold standard, the data, the
    split), the epoch budget, and the stand-in MMLU in place of the `mmlu/` folder the configs name."""
    start = standins["base"] if method == "gold_standard" else standins["target"]
    return [f"model.name_or_path={start}", f"model.tokenizer={start}",
            f"model.gold_standard={standins['gold_standard']}", f"data.path={standins['data']}",
            "data.split=validation", f"training.epochs={epochs:g}", f"evaluation.utility=mmlu:{standins['mmlu']}"]


def run_notebook(name: str, standins: dict[str, Path], out: Path, processes: int = 2, epochs: float = 1) -> dict:
    """papermill's command line on notebooks/<name>.ipynb from `notebooks/`, every parameter a string."""
    method = NOTEBOOKS[name]
    run_dir = out / "runs" / method
    executed = out / f"{name}.executed.ipynb"
    command = [sys.executable, "-m", "papermill", str(REPO / "notebooks" / f"{name}.ipynb"), str(executed),
               "-k", "python3", "-r", "config_path", f"configs/olmo-7b/{method}.yaml",
               "-r", "overrides", json.dumps(overrides_for(method, standins, epochs)),
               "-r", "num_processes", str(processes), "-r", "show_progress", "False", "-r", "run_dir", str(run_dir)]
    started = time.perf_counter()
    done = subprocess.run(command, cwd=REPO / "notebooks", capture_output=True, text=True, check=False)
    return {"notebook": name, "returncode": done.returncode, "seconds": time.perf_counter() - started,
            "executed": executed, "run_dir": run_dir, "stderr": done.stderr[-4000:],
            "outputs": notebook_text(executed) if executed.is_file() else ""}


def notebook_text(path: Path) -> str:
    """Every stream and text output of an executed notebook, in order."""
    book = json.loads(path.read_text())
    parts = []
    for cell in book["cells"]:
        for output in cell.get("outputs", []):
            if output.get("output_type") == "stream":
                parts.append("".join(output["text"]))
            elif "text/plain" in output.get("data", {}):
                parts.append("".join(output["data"]["text/plain"]))
    return "\n".join(parts)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, help="folder for the stand-ins, the runs and the executed notebooks")
    parser.add_argument("--notebooks", default=",".join(NOTEBOOKS), help="comma-separated: " + ", ".join(NOTEBOOKS))
    parser.add_argument("--processes", type=int, default=2)
    parser.add_argument("--epochs", type=float, default=1)
    parser.add_argument("--show-overrides", action="store_true", help="print each notebook's overrides and stop")
    args = parser.parse_args()
    out = Path(args.out).resolve()
    started = time.perf_counter()
    standins = build_standins(out)
    if args.show_overrides:
        for name, method in NOTEBOOKS.items():
            print(name, json.dumps(overrides_for(method, standins, args.epochs)))
        return 0
    report = json.loads(standins["report"].read_text())
    summary = {"command": " ".join(sys.argv), "environment": common.environment(), "processes": args.processes,
               "epochs": args.epochs, "build_seconds": round(time.perf_counter() - started, 1),
               "stand_ins": {name: {split: report[name][split] for split in ("forget", "retain")}
                             for name in ("target", "gold_standard")}, "notebooks": []}
    for name in args.notebooks.split(","):
        result = run_notebook(name, standins, out, args.processes, args.epochs)
        print(f"{name}: exit {result['returncode']} in {result['seconds']:.0f} s; run folder {result['run_dir']}")
        results_file = result["run_dir"] / "results.json"
        summary["notebooks"].append({
            "notebook": name, "returncode": result["returncode"], "seconds": round(result["seconds"], 1),
            "final_score": json.loads(results_file.read_text()).get("final_score") if results_file.is_file() else None})
        if result["returncode"]:
            print(result["stderr"])
    common.write_json(out / "journey.json", summary)
    return 1 if any(book["returncode"] for book in summary["notebooks"]) else 0


if __name__ == "__main__":
    raise SystemExit(main())
