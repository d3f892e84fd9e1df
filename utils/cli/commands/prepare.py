"""`unlearn prepare`: build (or reuse) the tiny world: data, tokenizer, pre-trained model, target, gold standard."""

from __future__ import annotations

import time

from utils.cli.main import add_config_arguments
from utils.experiment.experiment import Experiment
from utils.folders import check_not_input
from utils.io import check_output_location


def register(subparsers) -> None:
    parser = subparsers.add_parser("prepare", help="build the embedded default: mini-LUME, tokenizer, target, gold standard (a config naming a real model: check its inputs are reachable)")
    add_config_arguments(parser)
    parser.add_argument("--out", default=None, metavar="DIR", help="work folder (default: config workdir)")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    parser.set_defaults(func=run)


def run(args) -> int:
    experiment = Experiment.from_config(args.config, args.overrides)
    check_output_location(args.out or experiment.workdir, "folder")
    check_not_input(args.out or experiment.workdir, {"config file": args.config})
    started = time.perf_counter()
    report = experiment.prepare(args.out, progress=not args.quiet)
    if "reachable" in report:  # a real model's config: nothing to build, its inputs were checked (the table above)
        print(f"nothing to build for {experiment.start_model}: every input is reachable")
        return 0
    print(format_report(report))
    print(f"prepare finished in {time.perf_counter() - started:.1f} s; report in {report['workdir']}/prepare_report.json")
    return 0


def format_report(report: dict) -> str:
    lines = ["model          forget regurg.  forget knowl.  retain regurg.  retain knowl.  utility"]
    for name in ("target", "gold_standard"):
        r = report[name]
        utility = "n/a" if r["utility"] is None else f"{r['utility']:.3f}"
        lines.append(f"{name:<14} {r['forget']['regurgitation']:>14.3f} {r['forget']['knowledge']:>14.3f} "
                     f"{r['retain']['regurgitation']:>15.3f} {r['retain']['knowledge']:>14.3f}  {utility}")
    return "\n".join(lines)
