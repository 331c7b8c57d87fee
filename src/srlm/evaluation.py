"""The evaluation of M(t): as a reward model, head to head against M(t-1), and (with a verifier) by a program.

``evaluate`` runs the parts into one directory (``rm/`` from ``srlm.rm_eval``, ``winrate/`` from
``srlm.winrate``, ``verify/`` from ``srlm.verifiers``), writes ``summary.json`` (the key metrics
registration puts on the model version as ``metric.<key>`` tags, which the promotion rule reads)
and one Markdown report with each part as a section.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from srlm import benchmarks as bm
from srlm import judge_agreement, rm_eval, verifiers, winrate
from srlm.io import read_jsonl, read_prompts, write_json, write_jsonl
from srlm.metrics import RM_METRICS
from srlm.promotion import head_to_head_metrics
from srlm.reports import heading


def eval_prompts(given: str | None, eft_dir: str | Path, out: str | Path) -> Path:
    """The head-to-head prompts: the ``given`` prompts file if set, else the held-out EFT eval prompts."""
    out = Path(out)
    if given:
        rows = read_prompts(given)
    else:
        items = read_jsonl(Path(eft_dir) / "eft_eval.jsonl", "eft_eval")
        rows = [{"id": str(item.get("id", f"eval-{i:04d}")), "prompt": item["prompt"]} for i, item in enumerate(items)]
    write_jsonl(out, rows, "prompt")
    return out


def evaluate(
    rm: rm_eval.RMEvalConfig,
    win: winrate.WinRateConfig,
    verify: verifiers.VerifyConfig,
    *,
    model: str,
    previous: str,
    judge_model: str,
    eft_dir: str,
    prompts: str | None,
    seed_dir: str | None,
    out: str | Path,
    report: str | Path,
    iteration: int,
    previous_chat_template: str = "",
    benchmarks: Sequence[str] = (),
    benchmark_configs: Mapping[str, Any] | None = None,
    agreement: judge_agreement.JudgeAgreementConfig | None = None,
    judgements: str | None = None,
) -> dict[str, Any]:
    """Evaluate ``model`` (M<iteration>) into ``out``; write ``report``; return the summary plus each part's metrics.
    ``previous_chat_template``: M(t-1)'s template when it has none (M0, a base checkpoint). ``benchmarks``
    (``srlm.benchmarks``, configured by ``benchmark_configs``) run into ``out/<name>/``; a judged one without a
    judge server is judged by ``judge_model``. ``agreement``: the judge's drift against M(t-1)'s ``judgements`` of
    this round and its agreement with a judge server (``srlm.judge_agreement``) into ``out/judge_agreement/``."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    head_to_head = eval_prompts(prompts, eft_dir, out / "prompts.jsonl")
    rm_metrics = rm_eval.run_rm(rm, model, Path(eft_dir) / "eft_eval.jsonl", out / "rm")
    win_metrics = winrate.run_winrate(win, model, previous, judge_model, head_to_head, out / "winrate",
                                      previous_chat_template)
    verified = None
    if verify.verifier:
        verified = verifiers.run_verify(verify, model, verifiers.verify_prompts_path(verify, seed_dir), out / "verify")
    agreed = {} if agreement is None else judge_agreement.run(
        agreement, rm, model, out / "judge_agreement", judgements=judgements, rm_judgements=out / "rm" / "judgements.jsonl")
    benched = bm.run_benchmarks(benchmarks, benchmark_configs or {}, model, judge_model, out)
    summary = {**summary_of(rm_metrics, win_metrics, verified), **bm.headline_metrics(benched),
               **{k: agreed[k] for k in judge_agreement.SUMMARY if agreed.get(k) is not None}}
    write_json(out / "summary.json", summary)
    sections = [
        heading(1, f"Evaluation of M{iteration}"), "",
        f"Head-to-head against the previous model M{iteration - 1} and reward-model metrics on the EFT eval split.", "",
        winrate.winrate_report(win_metrics, read_jsonl(out / "winrate" / "answers.jsonl"), win.report_examples, level=2),
        "",
        rm_eval.rm_report(rm_metrics, read_jsonl(out / "rm" / "judgements.jsonl"), rm.report_examples, level=2),
    ]
    if verified is not None:
        sections += ["", verifiers.verify_report(verified, level=2)]
    if agreed:
        sections += ["", judge_agreement.report(agreed, level=2)]
    sections += [s for name, metrics in benched.items() for s in ("", bm.BENCHMARKS[name].section(metrics, out / name, 2))]
    Path(report).parent.mkdir(parents=True, exist_ok=True)
    Path(report).write_text("\n".join(sections), encoding="utf-8")
    parts = {"rm": rm_metrics, "winrate": win_metrics, **({"verify": verified} if verified is not None else {}),
             **benched, **({"judge_agreement": agreed} if agreed else {})}
    return {**summary, **parts, "prompts_file": str(head_to_head)}


def summary_of(rm: dict[str, Any], win: dict[str, Any], verified: dict[str, Any] | None) -> dict[str, Any]:
    """The key metrics of an evaluation (``summary.json``): RM metrics, head-to-head rates, lengths, verifier."""
    summary: dict[str, Any] = {k: rm[k] for k in RM_METRICS if rm.get(k) is not None}
    summary["judge_parse_failure_rate"] = rm["judge_parse_failure_rate"]
    summary.update({k: rm[k] for k in ("judge_ece", "judge_alpha_ordinal") if rm.get(k) is not None})
    summary.update(head_to_head_metrics(win, "previous"))
    summary["mean_length"] = win["mean_length_a"]
    summary["mean_length_previous"] = win["mean_length_b"]
    summary["mean_tokens"] = win["mean_tokens_a"]
    summary["mean_tokens_previous"] = win["mean_tokens_b"]
    summary["answers_truncated_share"] = win["answers_a_truncated_share"]
    if verified is not None:
        summary.update(verify_summary(verified))
    return summary


def verify_summary(verified: dict[str, Any]) -> dict[str, float]:
    """The verifier's headline numbers for summary.json and the model version's tags."""
    summary = {"verify_satisfied": verified["satisfied"], "verify_stderr": verified["stderr"],
               "verify_mean_length_words": verified["mean_length_words"]}
    summary.update({f"verify_satisfied_{kind}": m["satisfied"] for kind, m in verified["by_kind"].items()})
    if verified.get("judge"):
        summary["verify_judge_accuracy"] = verified["judge"]["accuracy"]
        summary["verify_judge_balanced_accuracy"] = verified["judge"]["balanced_accuracy"]
    return summary
