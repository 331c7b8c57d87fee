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

from srlm import stages
from srlm.config import add_config_arguments, config_from_args
from srlm.context import RunContext
from srlm.errors import SrlmError


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
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO, format="%(levelname)s %(name)s: %(message)s")
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
