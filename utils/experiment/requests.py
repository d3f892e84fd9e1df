"""Sequential deletion requests (`unlearn run CONFIG --requests K`): the forget set unlearned in K successive
requests, each from the model the previous one left, as a deployed model receives them.

The forget documents are dealt to the requests task by task in sorted id order (document 1 to request 1, 2 to 2,
..., K+1 to request 1 again), so every request holds documents of every task that has K or more, and all items of a
document stay in one request. Request k is an ordinary run of the config (`<out>/request_<k>`) on a LUME folder
holding request k's forget items and the whole retain set (`<out>/data/request_<k>`), starting from request k-1's
model (request 1 from the config's start model), with the config's MIA documents and gold standard. After each
request the model is scored on every request's forget items and on retain with the official terms, so the table
shows whether retain decays and whether what earlier requests forgot comes back.

Resumable per request: a finished request is read back; a killed one continues from its last checkpoint.
"""

from __future__ import annotations

import csv
import io
from pathlib import Path

from utils.config import replace_keys
from utils.data.lume import TASKS, LumeData
from utils.errors import UserError
from utils.evaluation.evaluate import kind_means, score_items
from utils.io import atomic_write_json, atomic_write_text, read_json, write_jsonl

PLAN_FILE = "requests.json"
SCORES_FILE = "request_scores.json"
SUMMARY_FILE = "requests_summary.csv"


def split_requests(lume: LumeData, count: int) -> list[list[str]]:
    """The forget documents of each request: per task, its documents in sorted order dealt round-robin."""
    documents = sorted({item.document_id for item in lume.forget})
    if count < 2:
        raise UserError(f"--requests must be at least 2 (one request is a plain run), got {count}")
    if count > len(documents):
        raise UserError(f"--requests {count}: the forget set has only {len(documents)} documents to share out")
    requests: list[list[str]] = [[] for _ in range(count)]
    for task in TASKS:
        ordered = sorted({item.document_id for item in lume.forget if item.task == task})
        for position, document in enumerate(ordered):
            requests[position % count].append(document)
    return requests


def item_row(item) -> dict:
    return {"id": item.id, "input": item.input, "output": item.output, "task": item.task}


def write_request_data(lume: LumeData, documents: list[str], folder: Path) -> Path:
    """A LUME folder (forget.jsonl, retain.jsonl) with the forget items of `documents` and the whole retain set."""
    chosen = set(documents)
    folder.mkdir(parents=True, exist_ok=True)
    write_jsonl(folder / "forget.jsonl", [item_row(item) for item in lume.forget if item.document_id in chosen])
    write_jsonl(folder / "retain.jsonl", [item_row(item) for item in lume.retain])
    return folder


def request_scores(experiment, model_dir: Path, plan: list[list[str]], progress: bool) -> dict:
    """The model after a request, scored with the official terms on every request's forget items (regurgitation
    and knowledge means) and on the retain set."""
    lume = experiment.lume()
    settings = experiment.config.evaluation
    model, tokenizer = experiment.load(str(model_dir))
    items = [*lume.forget, *lume.retain]
    scores = score_items(model, tokenizer, items, settings, progress=progress)
    out: dict = {"forget": {}, "retain": kind_means(lume.retain, scores)}
    for number, documents in enumerate(plan, start=1):
        chosen = set(documents)
        out["forget"][str(number)] = kind_means([i for i in lume.forget if i.document_id in chosen], scores)
    return out


def summary_rows(records: list[dict], count: int) -> list[dict]:
    rows = []
    for record in records:
        row = {"after_request": record["request"], "final_score": record["final_score"],
               "retain_regurgitation": record["scores"]["retain"]["regurgitation"],
               "retain_knowledge": record["scores"]["retain"]["knowledge"]}
        for number in range(1, count + 1):
            forget = record["scores"]["forget"][str(number)]
            row[f"forget{number}_regurgitation"] = forget["regurgitation"]
            row[f"forget{number}_knowledge"] = forget["knowledge"]
        rows.append(row)
    return rows


def summary_csv(rows: list[dict]) -> str:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(rows[0]), lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return buffer.getvalue()


def summary_markdown(rows: list[dict], count: int) -> str:
    header = ["after request", "final (own request)", *(f"forget {n} regurg." for n in range(1, count + 1)),
              "retain regurg.", "retain QA"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in rows:
        cells = [str(row["after_request"]),
                 "n/a" if row["final_score"] is None else f"{row['final_score']:.3f}",
                 *(f"{row[f'forget{n}_regurgitation']:.3f}" for n in range(1, count + 1)),
                 f"{row['retain_regurgitation']:.3f}", f"{row['retain_knowledge']:.3f}"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def plot_requests(rows: list[dict], count: int, before: dict, path: Path) -> None:
    """Each request's forget regurgitation and the retain scores after every request (0: before any)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = [0, *(row["after_request"] for row in rows)]
    fig, axis = plt.subplots(figsize=(7.5, 4.5))
    for number in range(1, count + 1):
        values = [before["forget"][str(number)]["regurgitation"],
                  *(row[f"forget{number}_regurgitation"] for row in rows)]
        axis.plot(steps, values, marker="o", label=f"forget request {number} (regurgitation)")
    axis.plot(steps, [before["retain"]["regurgitation"], *(row["retain_regurgitation"] for row in rows)],
              color="black", linewidth=2, marker="s", label="retain regurgitation")
    axis.plot(steps, [before["retain"]["knowledge"], *(row["retain_knowledge"] for row in rows)],
              color="black", linestyle="--", marker="s", label="retain knowledge")
    axis.set_xticks(steps, ["before", *(f"after {s}" for s in steps[1:])])
    axis.set_ylim(-0.02, 1.02)
    axis.set_ylabel("official term mean (forget: lower is forgotten)")
    axis.set_title(f"{count} sequential deletion requests")
    axis.legend(fontsize=7, loc="best")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def run_requests(experiment, count: int, resume: bool = False, overwrite: bool = False, progress: bool = True,
                 log=print) -> list[dict]:
    """Unlearn the forget set as `count` successive requests into `experiment.run_dir`; the per-request records."""
    out = Path(experiment.run_dir)
    lume = experiment.lume()
    plan = split_requests(lume, count)
    plan_path = out / PLAN_FILE
    if plan_path.is_file() and not overwrite:
        saved = read_json(plan_path, "requests plan")
        if saved.get("documents") != plan:
            raise UserError(f"{out} holds requests of another plan (other data or --requests); use another --out "
                            "or --overwrite")
        if not resume and (out / SUMMARY_FILE).is_file():
            raise UserError(f"{out} holds finished requests; --resume reads them back, --overwrite replaces them")
    out.mkdir(parents=True, exist_ok=True)
    mia_folder, _, _ = experiment.mia()
    atomic_write_json(plan_path, {"requests": count, "documents": plan, "config": str(experiment.source)})
    before_path = out / f"before_{SCORES_FILE}"
    before = read_json(before_path, "request scores") if before_path.is_file() else \
        request_scores(experiment, Path(experiment.start_model), plan, progress)
    atomic_write_json(before_path, before)
    records: list[dict] = []
    start_model = experiment.start_model
    for number, documents in enumerate(plan, start=1):
        folder = out / f"request_{number}"
        data = write_request_data(lume, documents, out / "data" / f"request_{number}")
        # The request's data and start model; the MIA documents and gold standard stay the config's.
        config = replace_keys(experiment.config, {
            "data.path": str(data), "model.name_or_path": start_model,
            "data.mia_path": str(mia_folder) if mia_folder is not None else "none",
            "model.gold_standard": experiment.gold_standard})
        request = experiment.with_config(config, run_dir=folder)
        finished = (folder / "results.json").is_file() and not overwrite
        log(f"[requests] request {number} of {count}: {len(documents)} documents"
            + (" (finished earlier, read back)" if finished else ""))
        results = read_json(folder / "results.json", "results file") if finished else \
            request.run(resume=resume and folder.is_dir(), overwrite=overwrite, progress=progress, log=log)
        scores_path = folder / SCORES_FILE
        scores = read_json(scores_path, "request scores") if scores_path.is_file() and finished else \
            request_scores(experiment, folder / "model", plan, progress)
        atomic_write_json(scores_path, scores)
        records.append({"request": number, "final_score": results.get("final_score"), "scores": scores})
        start_model = str(folder / "model")
    rows = summary_rows(records, count)
    atomic_write_text(out / SUMMARY_FILE, summary_csv(rows))
    atomic_write_text(out / "requests_summary.md", summary_markdown(rows, count))
    plot_requests(rows, count, before, out / "requests.png")
    log(summary_markdown(rows, count))
    log(f"[requests] {out / SUMMARY_FILE}, requests_summary.md, requests.png")
    return records
