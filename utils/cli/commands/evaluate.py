"""`unlearn evaluate --model DIR --data DIR ...`: score any checkpoint the way the official scorer does."""

from __future__ import annotations

import typing
from pathlib import Path

from utils.cli.main import add_config_arguments, check_at_least
from utils.config import EvaluationConfig, ModelConfig, replace_keys
from utils.errors import UserError
from utils.evaluation.sharding import Shards
from utils.experiment.experiment import Experiment
from utils.experiment.robustness import parse_attacks, results_text
from utils.folders import experiment_inputs

DTYPES = list(typing.get_args(typing.get_type_hints(ModelConfig)["dtype"]))
PARITY_MODES = list(typing.get_args(typing.get_type_hints(EvaluationConfig)["parity"]))
EVALUATION, MODEL = EvaluationConfig(), ModelConfig()  # the defaults the help text quotes

# Each flag is a config key under another name; a flag given wins over the config file and --set.
FLAG_KEYS = {
    "model": "model.name_or_path",
    "tokenizer": "model.tokenizer",
    "dtype": "model.dtype",
    "data": "data.path",
    "split": "data.split",
    "mia": "data.mia_path",
    "utility": "evaluation.utility",
    "subset": "evaluation.subset",
    "max_new_tokens": "evaluation.max_new_tokens",
    "batch_size": "evaluation.batch_size",
    "mmlu_shots": "evaluation.mmlu_shots",
    "parity": "evaluation.parity",
}


def add_config_flag(parser, flag: str, key: str, what: str, **options) -> None:
    """A flag that overrides the config key `key` (section.name); its help ends with the config's default."""
    section, name = key.split(".")
    default = getattr({"evaluation": EVALUATION, "model": MODEL}[section], name)
    parser.add_argument(flag, default=None, help=f"{what} (default: config {key}, {default})", **options)


def register(subparsers) -> None:
    parser = subparsers.add_parser("evaluate", help="evaluate a model (folder, hub name or LoRA adapter)")
    parser.add_argument("--model", default=None, help="model folder, hub name or LoRA adapter folder "
                                                      "(default: the prepared target)")
    parser.add_argument("--tokenizer", default=None, help="tokenizer, if not stored with the model")
    parser.add_argument("--data", default=None, help="LUME data folder (default: config data.path or the mini-LUME)")
    parser.add_argument("--split", choices=["train", "validation"], default=None,
                        help="the split of the data to score (default: config data.split, validation)")
    parser.add_argument("--mia", default=None, help="folder with member.jsonl/nonmember.jsonl, or 'none' "
                                                    "(default: found next to the data)")
    parser.add_argument("--utility", default=None, help="mmlu:DIR | synthetic:FILE | none "
                                                        "(default: the synthetic set of the prepared world)")
    parser.add_argument("--out", default=None, metavar="DIR",
                        help="output folder (default: <model>/evaluation or ./evaluation)")
    parser.add_argument("--subset", type=int, default=None, metavar="N",
                        help="only the first N documents per split and task")
    add_config_flag(parser, "--max-new-tokens", "evaluation.max_new_tokens", "tokens generated per answer, at least 1",
                    type=int, metavar="N")
    add_config_flag(parser, "--batch-size", "evaluation.batch_size", "prompts generated together, at least 1",
                    type=int, metavar="N")
    add_config_flag(parser, "--dtype", "model.dtype", "precision the model is loaded and evaluated in", choices=DTYPES)
    add_config_flag(parser, "--mmlu-shots", "evaluation.mmlu_shots",
                    "worked examples before each MMLU question, 0 or more", type=int, metavar="N")
    parser.add_argument("--parity", choices=PARITY_MODES, default=None,
                        help="batched: length-sorted, padded batches (fast; in bf16 a near-tie token can flip); "
                             "strict: one item and one MIA document at a time, as the official scorer ran "
                             f"(default: config evaluation.parity, {EVALUATION.parity})")
    parser.add_argument("--attacks", default=None, metavar="LIST",
                        help="robustness attacks after the evaluation, comma-separated: relearn (fine-tune a copy on "
                             "half the forget documents, score the other half), quantize (8- and 4-bit weights per "
                             "channel), quantize_group (4-bit, one scale per 128 weights), nf4 (bitsandbytes, GPU), the "
                             "prompt attacks prefix, roleplay, paraphrase, reverse, incontext, probe, or none; results.json gets a robustness block with the share of forgotten scores that came "
                             "back, measured against the config's model or the prepared target (default: config "
                             "evaluation.attacks, none)")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace the results an earlier evaluation left in --out")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    add_config_arguments(parser)
    parser.set_defaults(func=run)


def check_subset(subset: int | None) -> None:
    """0 or fewer documents per task would leave the 12 terms empty, found only after all the generation."""
    if subset is not None and subset < 1:
        raise UserError(f"--subset / evaluation.subset must be at least 1 document per task (or unset), got {subset}")


def build_experiment(args) -> Experiment:
    """The experiment the flags describe: the config (file, then --set), then each flag given over its key.
    One experiment resolves them like every other command's; a flag out of range is refused by its name."""
    check_subset(args.subset)
    check_at_least("--max-new-tokens", args.max_new_tokens)
    check_at_least("--batch-size", args.batch_size)
    check_at_least("--mmlu-shots", args.mmlu_shots, low=0)
    experiment = Experiment.from_config(args.config, args.overrides)
    flags = {key: getattr(args, name) for name, key in FLAG_KEYS.items()}
    if getattr(args, "attacks", None) is not None:
        flags["evaluation.attacks"] = parse_attacks(args.attacks)
    return experiment.with_config(replace_keys(experiment.config, flags))


def reference_target(args) -> str:
    """What robustness recovery is measured against: the config's model (file and --set, before --model names the
    model evaluated), else the prepared world's target."""
    return Experiment.from_config(args.config, args.overrides).target


def output_folder(out: str | None, model_name: str) -> Path:
    """--out, else `<model>/evaluation` for a local model folder, else ./evaluation."""
    if out:
        return Path(out)
    return Path(model_name) / "evaluation" if Path(model_name).is_dir() else Path("evaluation")


def run(args) -> int:
    experiment = build_experiment(args)
    out = output_folder(args.out, experiment.target)
    # Every input is validated before the (slow) model load and before anything is written.
    inputs = experiment_inputs(experiment, model=experiment.target)
    if args.out is None:
        del inputs["model"]  # the default <model>/evaluation only adds that folder to the model's
    target = reference_target(args) if experiment.config.evaluation.attacks else None
    results = experiment.evaluate_into(out, inputs, overwrite=args.overwrite, progress=not args.quiet, target=target)
    if Shards.from_environment().is_main:  # one report, also when a launcher started several processes
        print(results_text(results))
        print(f"results written to {out / 'results.json'}")
    return 0
