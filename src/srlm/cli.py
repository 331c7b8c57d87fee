"""``srlm <stage> ...``: run any stage by hand on files and directories.

The commands are the stage registry's (``srlm.stages``, those with a CLI). Every one takes
``--preset``, ``--config YAML`` and one flag per setting of its config; paths are plain flags.
The stage's statistics are printed as JSON on stdout. A user error (bad input, missing field,
existing output) ends with one line on stderr and exit status 2.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from typing import Any

from srlm import fit, stages
from srlm.config import add_config_arguments, config_from_args
from srlm.context import RunContext
from srlm.errors import SrlmError
from srlm.judge import JudgeConfig
from srlm.prompts import PromptGenConfig
from srlm.sampling import SamplingConfig


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="srlm", description="Self-Rewarding Language Models, stage by stage.")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True, metavar="<stage>")
    for stage in stages.STAGES.values():
        if not stage.cli:
            continue
        p = sub.add_parser(stage.command, help=stage.help, description=stage.help)
        paths = p.add_argument_group("inputs and outputs")
        for param in stage.params:
            paths.add_argument("--" + param.name.replace("_", "-"), dest=param.name, required=param.required,
                               type=param.type, nargs="+" if param.many else None, help=param.help)
        if stage.iteration:
            paths.add_argument("--iteration", type=int, help="the round the output is for (iteration t makes M(t))")
        if stage.outputs:
            paths.add_argument("--overwrite", action="store_true", help="replace an existing output")
        add_config_arguments(p, stage.config_class)
        p.set_defaults(stage=stage)
    _add_plan(sub)
    return parser


def _add_plan(sub: Any) -> None:
    p = sub.add_parser("plan", help="the fit check: memory per GPU of every stage for a model and a layout",
                       description="Estimate each stage's memory per GPU from the model's config.json (no weights "
                       "are read) and refuse what cannot fit, saying what would (srlm.fit states the formula).")
    p.add_argument("--model", required=True, help="model directory or its config.json")
    p.add_argument("--preset", default="paper", help="settings preset (default: paper)")
    p.add_argument("--settings", metavar="YAML", help="settings file (a copied preset); overrides --preset")
    p.add_argument("--nodes", type=int, default=1, help="training nodes")
    p.add_argument("--gpus-per-node", type=int, default=1, help="GPUs per training node")
    p.add_argument("--strategy", choices=fit.STRATEGIES, default="ddp", help="how training spreads the model states")
    p.add_argument("--gpu-memory-gib", type=float, default=80.0, help="memory of each GPU")
    p.add_argument("--tensor-parallel-size", type=int, help="GPUs one vLLM engine spans (default: the settings')")
    p.set_defaults(stage=None)


def _plan(args: argparse.Namespace) -> int:
    from srlm.training import DPOConfig, SFTConfig

    def config(cls: type) -> Any:
        return cls.load(args.preset, yaml_path=args.settings)

    def generator(cls: type) -> Any:
        return cls.load(args.preset, yaml_path=args.settings, tensor_parallel_size=args.tensor_parallel_size)

    layout = fit.Layout(args.nodes, args.gpus_per_node, args.strategy, args.gpu_memory_gib)
    configs = {"sft": config(SFTConfig), "dpo": config(DPOConfig),
               "generators": {"prompts": generator(PromptGenConfig), "sample": generator(SamplingConfig),
                              "judge": generator(JudgeConfig)}}
    shape, estimates = fit.plan(args.model, layout, **configs)
    print(f"{args.model}: {shape.params:,} parameters; training on {layout.describe()}; generation with vLLM")
    print(fit.format_table([e.summary() for e in estimates]))
    problems = fit.refusals(shape, estimates, layout, **configs, name=args.model)
    if problems:
        print("the fit check refuses this configuration:\n" + "\n".join(f"  - {p}" for p in problems), file=sys.stderr)
        return 2
    return 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    if args.command == "plan":
        try:
            return _plan(args)
        except SrlmError as e:
            print(f"srlm plan: error: {e}", file=sys.stderr)
            return 2
    stage: stages.Stage = args.stage
    try:
        config = config_from_args(stage.config_class, args)
        values = {p.name: getattr(args, p.name) for p in stage.params if getattr(args, p.name) is not None}
        ctx = RunContext(iteration=getattr(args, "iteration", None))
        stats = stage.run(ctx, {"config": config}, overwrite=getattr(args, "overwrite", False), **values)
    except SrlmError as e:
        print(f"srlm {stage.command}: error: {e}", file=sys.stderr)
        return 2
    print(json.dumps(stats, indent=2, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
