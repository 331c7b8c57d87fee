"""One report per pipeline run: a self-contained HTML page (plots embedded as PNG) across M1..Mt.

The gate writes it at the end of the run (a KFP HTML artifact, and an artifact of its MLflow run)
from what MLflow holds for the run: the ``evaluate`` stage of every iteration (RM metrics, the
head-to-head, the benchmarks, the judge's calibration and drift) and the ``pairs`` stage of every
DPO round (the self-judge's reliability, chosen vs rejected lengths). One plot per family, a
family without numbers says "not measured"; then a table of every number, with the judge's
identity and a digest of the run's settings.
"""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import html
import io
import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from srlm.metrics import RM_METRICS

Table = dict[int, dict[str, float]]  # iteration t -> metric -> value (M(t)'s evaluation; round t's pairs as pairs_*)


@dataclasses.dataclass(frozen=True)
class Family:
    title: str
    metrics: tuple[tuple[str, str], ...]  # (key, label)
    note: str = ""
    unit_range: bool = False  # fractions: the y axis is [0, 1]


FAMILIES = (
    Family("AlpacaEval win rates against the references", (
        ("alpaca_eval_lc_win_rate", "length-controlled win rate"), ("alpaca_eval_win_rate", "win rate"),
        ("alpaca_eval_discrete_win_rate", "discrete win rate")),
        "Bars: bootstrap 95% intervals over the instructions.", unit_range=True),
    Family("Head to head against the previous model", (
        ("adjusted_win_rate_vs_previous", "adjusted win rate vs M(t-1)"), ("win_rate_vs_previous", "win rate vs M(t-1)"),
        ("tie_rate_vs_previous", "tie rate vs M(t-1)")), "Judged by the run's fixed judge.", unit_range=True),
    Family("Answer length (characters)", (
        ("mean_length", "M(t) answers, head-to-head prompts"), ("alpaca_eval_mean_length", "M(t) answers, AlpacaEval"),
        ("pairs_chosen_mean_chars", "chosen replies of the round that trained M(t)"),
        ("pairs_rejected_mean_chars", "rejected replies of that round"))),
    Family("Answer length (tokens)", (("mean_tokens", "M(t) answers, head-to-head prompts"),
                                      ("mean_tokens_previous", "M(t-1) answers, same prompts"))),
    Family("Reward-model metrics (EFT eval split)", tuple((k, k.replace("_", " ")) for k in RM_METRICS),
           unit_range=True),
    Family("Judge reliability", (
        ("judge_alpha_ordinal", "rubric samples agree (alpha), eval split"),
        ("judge_ece", "calibration error (ECE) vs human ranks"),
        ("pairs_judge_alpha_ordinal", "rubric samples agree (alpha), the round's self-judging"),
        ("pairs_all_tie_share", "prompts whose candidates all tie"),
        ("pairs_score_length_spearman", "score-length correlation (Spearman)"),
        ("judge_tau_vs_previous", "Kendall tau, M(t) vs M(t-1) judging the same candidates"),
        ("judge_tau_vs_external", "Kendall tau, self-judge vs external judge"),
        ("alpaca_eval_position_consistency", "pairwise verdicts agree in both orders"))),
    Family("IFEval", (("ifeval_prompt_strict", "prompt level, strict"), ("ifeval_prompt_loose", "prompt level, loose"),
                      ("ifeval_instruction_strict", "instruction level, strict"),
                      ("ifeval_instruction_loose", "instruction level, loose")), unit_range=True),
    Family("MT-Bench", (("mt_bench_score", "overall"), ("mt_bench_score_turn_1", "turn 1"),
                        ("mt_bench_score_turn_2", "turn 2")), "Per category: the next plot."),
)
MT_CATEGORY = "mt_bench_category_"


def collect(experiment: str, kfp_run_id: str) -> tuple[Table, list[str], dict[str, str]]:
    """The run's numbers by iteration (evaluate: as logged; pairs: prefixed ``pairs_``), who judged its
    evaluations, and its settings."""
    from srlm import tracking

    table: Table = {}
    evaluations = tracking.stage_runs(experiment, kfp_run_id, "evaluate")
    for t, run in evaluations.items():
        table.setdefault(t, {}).update(run.data.metrics)
    for t, run in tracking.stage_runs(experiment, kfp_run_id, "pairs").items():
        table.setdefault(t, {}).update({f"pairs_{k}": v for k, v in run.data.metrics.items()})
    judges = sorted({judge_identity(run.data.params) for run in evaluations.values()})
    return table, judges, tracking.pipeline_params(experiment, kfp_run_id)


def judge_identity(params: Mapping[str, str]) -> str:
    """Who judged: each benchmark's judge server (model at URL) when set, else the run's fixed judge model."""
    local = params.get("path.judge_model", "?")
    parts = [f"fixed judge model {local}"]
    for name in ("alpaca_eval", "mt_bench"):
        url = params.get(f"{name}.judge_base_url")
        if url and name in params.get("benchmarks", "").split(","):
            # the logged params are redacted already (srlm.secrets): no password in the URL
            parts.append(f"{name}: {params.get(f'{name}.judge_model') or 'the server default'} at {url}")
    return "; ".join(parts)


def settings_digest(params: Mapping[str, str]) -> str:
    """A short digest of the run's settings: two runs with the same digest ran with the same settings."""
    return hashlib.sha256(json.dumps(dict(sorted(params.items())), sort_keys=True).encode()).hexdigest()[:12]


def _figure(draw: Any) -> str:
    """A matplotlib figure drawn by ``draw(ax)`` as a base64 PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(10, 3.6), dpi=100)
    try:
        draw(ax)
        ax.grid(alpha=0.3)
        fig.tight_layout()
        buffer = io.BytesIO()
        fig.savefig(buffer, format="png")
    finally:
        plt.close(fig)
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def _finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value)


def plot_family(family: Family, table: Table) -> str | None:
    """The family's plot across M1..Mt (a line per metric; interval bars where ``<key>_low/_high`` exist)."""
    series = [(key, label) for key, label in family.metrics if any(_finite(row.get(key)) for row in table.values())]
    if not series:
        return None
    models = sorted(table)

    def draw(ax: Any) -> None:
        for key, label in series:
            xs = [t for t in models if _finite(table[t].get(key))]
            ys = [table[t][key] for t in xs]
            lows = [table[t].get(f"{key}_low") for t in xs]
            highs = [table[t].get(f"{key}_high") for t in xs]
            if all(_finite(v) for v in lows + highs) and xs:
                err = [[y - lo for y, lo in zip(ys, lows)], [hi - y for y, hi in zip(ys, highs)]]
                ax.errorbar(xs, ys, yerr=err, marker="o", capsize=4, label=label)
            else:
                ax.plot(xs, ys, marker="o", label=label)
        ax.set_xticks(models, [f"M{t}" for t in models])
        if family.unit_range:  # fractions in [0, 1]; correlations may go down to -1
            lowest = min(table[t][key] for key, _ in series for t in models if _finite(table[t].get(key)))
            ax.set_ylim(-1.02 if lowest < 0 else -0.02, 1.02)
        ax.set_title(family.title)
        ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))

    return _figure(draw)


def plot_mt_bench_categories(table: Table) -> str | None:
    """MT-Bench per category: grouped bars, one group per category, one bar per model."""
    categories = sorted({k[len(MT_CATEGORY):] for row in table.values() for k, v in row.items()
                         if k.startswith(MT_CATEGORY) and _finite(v)})
    if not categories:
        return None
    models = sorted(table)

    def draw(ax: Any) -> None:
        width = 0.8 / len(models)
        for i, t in enumerate(models):
            values = [table[t].get(MT_CATEGORY + c) for c in categories]
            ax.bar([j + i * width for j in range(len(categories))], [v if _finite(v) else 0 for v in values],
                   width, label=f"M{t}")
        ax.set_xticks([j + 0.4 - width / 2 for j in range(len(categories))], categories)
        ax.set_ylim(0, 10)
        ax.set_title("MT-Bench per category (1-10)")
        ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))

    return _figure(draw)


STYLE = """body{font-family:system-ui,sans-serif;margin:2em auto;max-width:1100px;color:#222}
h1{font-size:1.6em}h2{font-size:1.2em;margin-top:1.6em}.plot{margin:0.5em 0 1.5em}
.note{color:#555;font-size:0.9em}table{border-collapse:collapse;font-size:0.8em}
td,th{border:1px solid #ccc;padding:2px 6px;text-align:right}th:first-child,td:first-child{text-align:left}
.missing{color:#999}"""


def render(table: Table, params: Mapping[str, str], *, title: str, judges: Sequence[str] = (),
           decision: Mapping[str, Any] | None = None) -> str:
    """The HTML page: the decision, one plot per family, the table of every number."""
    models = sorted(table)
    head = [f"<h1>{html.escape(title)}</h1>",
            f"<p>Models: {', '.join(f'M{t}' for t in models) or 'none evaluated'}. "
            f"Settings digest <code>{settings_digest(params)}</code> (sha256 of the run's settings).</p>",
            f"<p>Judge: {html.escape('; '.join(judges) or 'unknown')}.</p>"]
    if decision:
        head.append(f"<p>Promotion: <b>{'promoted' if decision.get('promoted') else 'not promoted'}</b> — "
                    f"{html.escape(str(decision.get('reason', '')))}</p>")
    body = []
    plots = [(f, plot_family(f, table)) for f in FAMILIES]
    plots.append((Family("MT-Bench per category", ()), plot_mt_bench_categories(table)))
    for family, png in plots:
        body.append(f"<h2>{html.escape(family.title)}</h2>")
        if png is None:
            body.append('<p class="missing">Not measured in this run.</p>')
            continue
        body.append(f'<img class="plot" alt="{html.escape(family.title)}" src="data:image/png;base64,{png}">')
        if family.note:
            body.append(f'<p class="note">{html.escape(family.note)}</p>')
    body += ["<h2>Every number</h2>", number_table(table)]
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            f"<title>{html.escape(title)}</title><style>{STYLE}</style></head><body>\n"
            + "\n".join(head + body) + "\n</body></html>\n")


def number_table(table: Table) -> str:
    models = sorted(table)
    keys = sorted({k for row in table.values() for k, v in row.items() if _finite(v)})
    rows = ["<table><tr><th>metric</th>" + "".join(f"<th>M{t}</th>" for t in models) + "</tr>"]
    for key in keys:
        cells = "".join(f"<td>{table[t][key]:.4g}</td>" if _finite(table[t].get(key)) else "<td></td>" for t in models)
        rows.append(f"<tr><td>{html.escape(key)}</td>{cells}</tr>")
    return "\n".join(rows + ["</table>"])


def write(path: str | Path, experiment: str, kfp_run_id: str, *, title: str,
          decision: Mapping[str, Any] | None = None) -> dict[str, int]:
    """Collect the run's numbers from MLflow and write the report to ``path``; how many plots it holds."""
    from srlm.io import atomic_path

    table, judges, params = collect(experiment, kfp_run_id)
    page = render(table, params, title=title, judges=judges, decision=decision)
    with atomic_path(path) as tmp:
        tmp.write_text(page, encoding="utf-8")
    return {"report_models": len(table), "report_plots": page.count('<img class="plot"')}
