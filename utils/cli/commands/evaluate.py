"""`unlearn evaluate --model DIR --data DIR ...`: score any checkpoint the way the official scorer does."""

from __future__ import annotations

from pathlib import Path

from utils.cli.main import add_config_arguments, check_at_least
from utils.config import replace_keys
from utils.errors import UserError
from utils.experiment.experiment import Experiment
from utils.io import check_output_location


def register(subparsers) -> None:
    parser = subparsers.add_parser("evaluate", help="evaluate a model (folder, hub name or LoRA adapter)")
    parser.add_argument("--model", default=None, help="model folder, hub name or LoRA adapter folder "
                                                      "(default: the prepared target)")
    parser.add_argument("--tokenizer", default=None, help="tokenizer, if not stored with the model")
    parser.add_argument("--data", default=None, help="LUME data folder (default: config data.path or the mini-LUME)")
    parser.add_argument("--split", choices=["train", "validation"], default=None)
    parser.add_argument("--mia", default=None, help="folder with member.jsonl/nonmember.jsonl, or 'none' "
                                                    "(default: found next to the data)")
    parser.add_argument("--utility", default=None, help="mmlu:DIR | synthetic:FILE | none "
                                                        "(default: the synthetic set of the prepared world)")
    parser.add_argument("--out", default=None, help="output folder (default: <model>/evaluation or ./evaluation)")
    parser.add_argument("--subset", type=int, default=None, help="only the first N documents per split and task")
    parser.add_argument("--max-new-tokens", type=int, default=None)
    parser.add_argument("--batch-size", type=int, default=None)
    parser.add_argument("--overwrite", action="store_true",
                        help="replace the results an earlier evaluation left in --out")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    add_config_arguments(parser)
    parser.set_defaults(func=run)


def check_subset(subset: int | None) -> None:
    """0 or fewer documents per task would leave the 12 terms empty, found only after all the generation."""
    if subset is not None and subset < 1:
        raise UserError(f"--subset / evaluation.subset must be at least 1 document per task (or unset), got {subset}")


def output_folder(out: str | None, model_name: str) -> Path:
    """--out, else `<model>/evaluation` for a local model folder, else ./evaluation."""
    if out:
        return Path(out)
    return Path(model_name) / "evaluation" if Path(model_name).is_dir() else Path("evaluation")


def run(args) -> int:
    from utils.evaluation.metrics import summary_text

    check_subset(args.subset)
    check_at_least("--max-new-tokens", args.max_new_tokens)
    check_at_least("--batch-size", args.batch_size)
    # The flags are config keys under other names: one experiment resolves them like every other command.
    flags = {"model.name_or_path": args.model, "model.tokenizer": args.tokenizer, "data.path": args.data,
             "data.split": args.split, "data.mia_path": args.mia, "evaluation.utility": args.utility,
             "evaluation.subset": args.subset, "evaluation.max_new_tokens": args.max_new_tokens,
             "evaluation.batch_size": args.batch_size}
    experiment = Experiment.from_config(args.config, args.overrides)
    experiment = experiment.with_config(replace_keys(experiment.config, flags))
    out = output_folder(args.out, experiment.target)
    # Validate every input before the (slow) model load and before anything is written.
    check_output_location(out, "folder")
    if (out / "results.json").is_file() and not args.overwrite:
        raise UserError(f"{out} already holds finished results ({out / 'results.json'}); choose another --out")
    results = experiment.evaluate_checkpoint(experiment.target, out, tokenizer=experiment.config.model.tokenizer,
                                             progress=not args.quiet)
    from utils.evaluation.sharding import Shards

    if Shards.from_environment().is_main:  # one report, also when a launcher started several processes
        print(summary_text(results))
        print(f"results written to {out / 'results.json'}")
    return 0
