"""`unlearn evaluate --model DIR --data DIR ...`: score any checkpoint the way the official scorer does."""

from __future__ import annotations

import time
from pathlib import Path

from utils.cli import add_config_arguments, check_at_least
from utils.config import load_config
from utils.errors import UserError
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


def resolve_utility_spec(spec: str | None, workdir: str | Path) -> str | None:
    """An explicit spec, else the prepared world's synthetic set when it exists, else none."""
    if spec:
        kind, _, target = spec.partition(":")
        if kind == "none":
            return None
        if kind not in ("mmlu", "synthetic") or not target:
            raise UserError(f"--utility must be mmlu:DIR, synthetic:FILE or none, got {spec!r}")
        if not Path(target).exists():
            raise UserError(f"utility data not found: {target}")
        return spec
    default = Path(workdir) / "data" / "general" / "multiple_choice.jsonl"
    return f"synthetic:{default}" if default.is_file() else None


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
    from utils.data import load_lume, resolve_mia
    from utils.evaluation import evaluate_model, write_evaluation
    from utils.metrics import summary_text
    from utils.models import load_model_and_tokenizer

    check_subset(args.subset)
    check_at_least("--max-new-tokens", args.max_new_tokens)
    check_at_least("--batch-size", args.batch_size)
    config = load_config(args.config, args.overrides)
    workdir = Path(config.workdir)
    split = args.split or config.data.split
    data_dir = args.data or config.data.path or str(workdir / "data")
    model_name = args.model or config.model.name_or_path or str(workdir / "target")
    out = output_folder(args.out, model_name)
    # Validate every input before the (slow) model load and before anything is written.
    check_output_location(out, "folder")
    if (out / "results.json").is_file() and not args.overwrite:
        raise UserError(f"{out} already holds finished results ({out / 'results.json'}); choose another --out")
    utility_spec = resolve_utility_spec(args.utility or config.evaluation.utility, workdir)
    subset = args.subset if args.subset is not None else config.evaluation.subset
    lume = load_lume(data_dir, split)
    mia_dir, mia_documents, mia_missing = resolve_mia(args.mia or config.data.mia_path, data_dir, split)
    model, tokenizer = load_model_and_tokenizer(model_name, args.tokenizer or config.model.tokenizer,
                                                config.model.dtype, config.model.trust_remote_code)
    import torch

    if torch.cuda.is_available():
        model.to("cuda")
    started = time.perf_counter()
    evaluation = evaluate_model(
        model, tokenizer, lume, mia_documents=mia_documents, utility_spec=utility_spec,
        max_new_tokens=args.max_new_tokens if args.max_new_tokens is not None else config.evaluation.max_new_tokens,
        batch_size=args.batch_size if args.batch_size is not None else config.evaluation.batch_size,
        nll_batch_size=config.evaluation.nll_batch_size, mmlu_shots=config.evaluation.mmlu_shots,
        mmlu_threshold=config.evaluation.mmlu_threshold,
        subset=subset,
        evaluated={"model": model_name, "data": str(data_dir), "split": split,
                   "mia": None if mia_documents is None else str(mia_dir), "utility": utility_spec},
        progress=not args.quiet,
        warnings=[mia_missing] if mia_missing else [],
    )
    evaluation.results["timings"]["total"] = time.perf_counter() - started
    path = write_evaluation(evaluation, out)
    print(summary_text(evaluation.results))
    print(f"results written to {path}")
    return 0
