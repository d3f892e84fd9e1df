"""`unlearn score DIR`: the official metrics over generations that already exist (the library's
`utils.evaluation.scoring.score_directory`; this command parses, writes and prints).

DIR holds `forget_generations.jsonl` and `retain_generations.jsonl` (one object per line with
`id`, `task`, `expected_output`, `model_output`; other fields are ignored), optionally
`mia_nll.json` (`{"member": [...], "nonmember": [...]}` mean token NLLs) and `mmlu_metrics.json`
(`{"average_acc": x}`). No model is loaded, so a run scored elsewhere (or the official parity
vectors) can be re-scored on any machine. Every input is validated before anything is written: a
problem ends in one line naming the file, the row and what is wrong, and an existing
`results.json` stays as it was.

`--out` is a FILE here (every other command's `--out` is a folder): the re-score is one results file, kept
apart from the results it must not replace. The one config key scoring reads is
`evaluation.mmlu_threshold`, so `--config`/`--set` give the same bar as the run being re-scored.
"""

from __future__ import annotations

from pathlib import Path

from utils.cli.main import add_config_arguments
from utils.config import load_config
from utils.data.lume import SPLITS
from utils.errors import UserError
from utils.evaluation.metrics import DEFAULT_MMLU_THRESHOLD, summary_text
from utils.evaluation.scoring import MIA_FILE, MMLU_FILE, replaceable_results, score_directory
from utils.folders import check_not_input
from utils.io import atomic_write_json, check_output_location


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "score", help="compute the official SemEval-2025 Task 4 scores from saved generations")
    parser.add_argument("directory", help="folder with forget_generations.jsonl and retain_generations.jsonl "
                                          f"(optionally {MIA_FILE} and {MMLU_FILE})")
    parser.add_argument("--out", default=None, metavar="FILE",
                        help="the results file to write; a FILE, not a folder as for the other commands (default: "
                             "DIR/results.json, unless that holds a finished evaluation of a model)")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace --out (or DIR/results.json) even when it holds a finished evaluation")
    parser.add_argument("--mmlu-threshold", type=float, default=None, metavar="X",
                        help="warn when the MMLU average is below this, between 0 and 1 (default: config "
                             f"evaluation.mmlu_threshold, {DEFAULT_MMLU_THRESHOLD}: the 7B ranking bar)")
    add_config_arguments(parser, config_help="YAML config file; scoring reads its evaluation.mmlu_threshold "
                                             "(default: the embedded default)")
    parser.set_defaults(func=run)


def mmlu_threshold(args) -> float:
    """--mmlu-threshold when given, else the config's evaluation.mmlu_threshold (file, then --set)."""
    configured = load_config(args.config, args.overrides).evaluation.mmlu_threshold  # also validates the config
    return configured if args.mmlu_threshold is None else args.mmlu_threshold


def run(args) -> int:
    out = Path(args.out) if args.out else Path(args.directory) / "results.json"
    check_output_location(out, "file")
    directory = Path(args.directory)
    check_not_input(out, [("generations file", directory / f"{split}_generations.jsonl") for split in SPLITS]
                    + [("MIA losses file", directory / MIA_FILE), ("MMLU metrics file", directory / MMLU_FILE),
                       ("config file", args.config)])
    if not args.overwrite and not replaceable_results(out):
        if args.out:
            raise UserError(f"{out} already holds finished results; choose another --out")
        raise UserError(f"{out} holds a finished evaluation that re-scoring would replace; write the re-score "
                        f"elsewhere with --out FILE")
    results = score_directory(args.directory, mmlu_threshold(args))
    atomic_write_json(out, results)
    print(f"Scores for {args.directory}")
    print(summary_text(results))
    print(f"results written to {out}")
    return 0
