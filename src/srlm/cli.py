"""``srlm <stage> ...``: run any stage by hand on files and directories.

Every stage takes ``--preset``, ``--config YAML`` and one flag per setting of its config; paths
are plain flags. The stage's statistics are printed as JSON on stdout. A user error (bad input,
missing field, existing output) ends with one line on stderr and exit status 2.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import json
import logging
import sys
from collections.abc import Callable
from typing import Any

from srlm.config import StageConfig, add_config_arguments, config_from_args
from srlm.errors import SrlmError


@dataclasses.dataclass(frozen=True)
class Path_:
    name: str
    help: str
    required: bool = True


@dataclasses.dataclass(frozen=True)
class Command:
    name: str
    module: str
    config: str
    run: str
    paths: tuple[Path_, ...]
    help: str

    def load(self) -> tuple[type[StageConfig], Callable[..., dict[str, Any]]]:
        module = importlib.import_module(f"srlm.{self.module}")
        return getattr(module, self.config), getattr(module, self.run)


MODEL = Path_("model", "model directory (Hugging Face save_pretrained folder with tokenizer and chat template)")

COMMANDS = (
    Command("tiny-model", "tiny_model", "TinyModelConfig", "run",
            (Path_("out", "directory to write the model to"),),
            "build the tiny Llama-style model and its BPE tokenizer locally (M0 of the embedded default)"),
    Command("seed", "seed_data", "SeedConfig", "run",
            (Path_("out", "directory for ift.jsonl and eft_train/eft_eval.jsonl (bundled) or eft_pool.jsonl (OpenAssistant)"),),
            "write seed data: the bundled seed set, or IFT + EFT pool from OpenAssistant data"),
    Command("build-eft", "eft", "EFTConfig", "run",
            (Path_("model", "the SFT baseline (judge) model directory"),
             Path_("pool", "EFT candidate pool JSONL (from `srlm seed` on OpenAssistant data)"),
             Path_("out", "directory for eft_train.jsonl and eft_eval.jsonl")),
            "build judge (EFT) data: judge the pool, keep judgements that agree with human ranks"),
    Command("sft", "training", "SFTConfig", "run_sft",
            (MODEL, Path_("ift", "IFT JSONL"), Path_("eft", "EFT training JSONL (optional)", required=False),
             Path_("out", "directory for the trained model")),
            "seed SFT on IFT (+ EFT) data: M0 -> M1"),
    Command("prompts", "prompts", "PromptGenConfig", "run",
            (MODEL, Path_("seed_prompts", "IFT JSONL whose first user turns are the seed prompts (default: bundled)", required=False),
             Path_("out", "prompts JSONL to write")),
            "generate new prompts, Self-Instruct style, with ROUGE-L and keyword filters"),
    Command("sample", "sampling", "SamplingConfig", "run",
            (MODEL, Path_("prompts", "prompts JSONL ({id, prompt} or {instruction})"), Path_("out", "candidates JSONL to write")),
            "sample N candidate replies per prompt"),
    Command("judge", "judge", "JudgeConfig", "run",
            (MODEL, Path_("candidates", "candidates JSONL"), Path_("out", "judgements JSONL to write")),
            "self-judge every candidate with the additive 5-point rubric"),
    Command("pairs", "pairs", "PairsConfig", "run",
            (Path_("judgements", "judgements JSONL"), Path_("out", "preference pairs JSONL to write")),
            "build preference pairs: highest vs lowest mean score, ties dropped"),
    Command("dpo", "training", "DPOConfig", "run_dpo",
            (MODEL, Path_("pairs", "preference pairs JSONL"), Path_("out", "directory for the trained model")),
            "one DPO round: M(t) -> M(t+1), reference = M(t)"),
    Command("eval-rm", "evaluation", "RMEvalConfig", "run_rm",
            (MODEL, Path_("eft_eval", "EFT eval JSONL (prompts with ranked replies)"), Path_("out", "report directory")),
            "reward-model metrics: pairwise accuracy, 5-best, exact match, Spearman, Kendall tau"),
    Command("winrate", "evaluation", "WinRateConfig", "run_winrate",
            (Path_("model_a", "model A directory"), Path_("model_b", "model B directory"),
             Path_("judge_model", "judge model directory (keep it fixed across iterations, e.g. M1)"),
             Path_("prompts", "prompts JSONL"), Path_("out", "report directory")),
            "head-to-head win rate of A vs B, each pair judged in both orders"),
    Command("export-alpaca", "evaluation", "WinRateConfig", "export_alpaca",
            (MODEL, Path_("prompts", "prompts JSONL (e.g. AlpacaEval instructions)"),
             Path_("out", "model_outputs.json to write"),
             Path_("generator_name", "name recorded in the 'generator' field", required=False)),
            "write a model's answers in AlpacaEval's model_outputs.json format"),
    Command("promote", "tracking", "PromotionRule", "run_promote",
            (Path_("name", "registered model name in MLflow (tracking URI from MLFLOW_TRACKING_URI)"),
             Path_("version", "model version to consider (default: the newest)", required=False)),
            "set `challenger` on a registered model version; move `champion` to it when the promotion rule holds"),
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="srlm", description="Self-Rewarding Language Models, stage by stage.")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True, metavar="<stage>")
    for command in COMMANDS:
        config_cls, _ = command.load()
        p = sub.add_parser(command.name, help=command.help, description=command.help)
        paths = p.add_argument_group("inputs and outputs")
        for path in command.paths:
            paths.add_argument("--" + path.name.replace("_", "-"), dest=path.name, required=path.required, help=path.help)
        paths.add_argument("--overwrite", action="store_true", help="replace an existing output")
        add_config_arguments(p, config_cls)
        p.set_defaults(command_spec=command)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    command: Command = args.command_spec
    config_cls, run = command.load()
    try:
        config = config_from_args(config_cls, args)
        paths = {p.name: getattr(args, p.name) for p in command.paths if getattr(args, p.name) is not None}
        stats = run(config, **paths, overwrite=args.overwrite)
    except SrlmError as e:
        print(f"srlm {command.name}: error: {e}", file=sys.stderr)
        return 2
    print(json.dumps(stats, indent=2, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
