"""The promotion policy: when ``champion`` moves to a challenger. Pure: metrics in, a decision out.

``srlm.model_registry.promote`` reads the metrics from the MLflow registry, applies this rule and
moves the aliases (the pipeline's gate and ``srlm promote`` call it).

The rule (:class:`PromotionRule`, :func:`evaluate_rule`)
    Aliases only (stages are deprecated). ``promote`` sets ``challenger`` on the version
    considered (default: the newest) and moves ``champion`` to it only when the rule holds:

    1. No champion yet: the challenger becomes champion (nothing to compare against).
    2. The challenger is the champion already: nothing moves.
    3. Otherwise let W be the challenger's head-to-head win rate against the current champion,
       for ``metric`` = ``adjusted_win_rate`` ((wins + ties/2) / prompts, the default: 0.5 means
       "as good as") or ``win_rate`` (wins / prompts), taken from the first of

       - ``<metric>_vs_champion`` in the ``metrics=`` argument (measured just now, against the
         current champion);
       - ``<metric>_vs_v<N>`` where N is the champion's version (measured against exactly it);
       - ``<metric>_vs_previous`` when the champion is the challenger's parent (its
         ``parent_version`` tag is the champion's version), as every iteration measures M(t) vs
         M(t-1).

       Promote when **W >= min_win_rate** (default 0.5) **and** the challenger's RM metric
       (``rm_metric``, default ``pairwise_accuracy``; higher is better) is **not lower than the
       champion's by more than rm_tolerance** (absolute, default 0.02). ``rm_metric=""`` drops
       the RM check. With ``benchmark_metric`` set (a benchmark's summary key, e.g.
       ``alpaca_eval_lc_win_rate``, ``mt_bench_score``, ``ifeval_prompt_strict``: ``srlm.benchmarks``;
       higher is better) the challenger's value must also **not be lower than the champion's by more
       than benchmark_tolerance** (absolute; negative: it must rise by at least that much).

    Metrics are read from the versions' tags ``metric.<key>``; the ``metrics=`` argument adds the
    challenger's fresh ones (overriding its tags) and is recorded as tags on it. A
    ``<metric>_vs_champion`` value is never stored under that name (it would go stale when the
    champion moves): ``register_model`` and ``promote`` store it as ``<metric>_vs_v<N>``
    for the champion N of that moment (and drop it when there is no champion). When a metric the
    rule needs is missing on either side, ``promote`` raises SrlmError naming what is missing
    and changes nothing (with ``require_metrics=False`` instead: no promotion, the reason says
    what is missing, ``challenger`` is set). An unknown metric name is rejected when the rule is
    built (:meth:`PromotionRule.validate`). The decision is written on the challenger as tags
    ``promotion.promoted`` / ``promotion.reason``. :func:`head_to_head_metrics` turns an
    ``srlm winrate`` result (A = challenger) into these metric keys.
"""

from __future__ import annotations

import dataclasses
import logging
import re
from collections.abc import Mapping
from typing import Any, Literal

from srlm.config import StageConfig, setting
from srlm.errors import SrlmError
from srlm.metrics import RM_METRICS, RMMetric, WinMetric

log = logging.getLogger(__name__)

CHAMPION = "champion"
CHALLENGER = "challenger"
METRIC_TAG_PREFIX = "metric."
_NAME_RE = re.compile(r"^[\w\-]*$")



@dataclasses.dataclass
class PromotionRule(StageConfig):
    """When ``champion`` moves to the challenger (the exact rule: this module's docstring)."""

    metric: WinMetric = setting(
        "adjusted_win_rate",
        "head-to-head win-rate metric of the challenger against the champion: win_rate (wins / prompts) or "
        "adjusted_win_rate ((wins + ties/2) / prompts); read as <metric>_vs_champion (fresh), <metric>_vs_v<N> "
        "(N = the champion's version) or <metric>_vs_previous (when the champion is the challenger's parent)",
    )
    min_win_rate: float = setting(0.5, "promote only when the challenger's win rate against the champion is >= this")
    rm_metric: RMMetric | Literal[""] = setting(
        "pairwise_accuracy",
        f"reward-model metric that must not drop ({', '.join(RM_METRICS)}; '' = no RM check)",
    )
    rm_tolerance: float = setting(0.02, "largest allowed drop of rm_metric from the champion's value (absolute)")
    benchmark_metric: str = setting(
        "", "a benchmark metric that must not drop (e.g. alpaca_eval_lc_win_rate, mt_bench_score, "
            "ifeval_prompt_strict; its benchmark must be in evaluation.benchmarks); '' = no benchmark check")
    benchmark_tolerance: float = setting(
        0.0, "largest allowed drop of benchmark_metric from the champion's value (absolute; negative = the least rise)")
    require_metrics: bool = setting(
        True, "a missing metric is an error (false: no promotion, the reason says what is missing)"
    )

    def validate(self) -> None:
        if not 0.0 <= self.min_win_rate <= 1.0:
            raise SrlmError(f"min_win_rate must be within [0, 1] (a fraction, not a percentage), not {self.min_win_rate}")
        if self.rm_tolerance < 0:
            raise SrlmError(f"rm_tolerance must be >= 0, not {self.rm_tolerance}")
        if self.benchmark_metric:
            from srlm.benchmarks import BENCHMARKS, benchmark_of_metric

            if benchmark_of_metric(self.benchmark_metric) is None:
                raise SrlmError(f"benchmark_metric {self.benchmark_metric!r} is no benchmark's: it starts with one of "
                                f"{', '.join(n + '_' for n in BENCHMARKS)} (e.g. alpaca_eval_lc_win_rate)")


def head_to_head_metrics(winrate: Mapping[str, Any], against: str = "previous") -> dict[str, float]:
    """``srlm winrate`` stats (A = challenger) -> ``win_rate_vs_<against>``, ``adjusted_win_rate_vs_<against>``, ...

    ``against`` is ``previous`` (B was the challenger's parent) or ``champion`` (B was the
    current champion). Rates are fractions in [0, 1].
    """
    if not _NAME_RE.match(against) or not against:
        raise SrlmError(f"{against!r}: name what the challenger was compared against, e.g. previous or champion")
    try:
        n = int(winrate["prompts"])
        wins, ties, losses = (int(winrate[k]) for k in ("wins", "ties", "losses"))
    except (KeyError, TypeError, ValueError):
        raise SrlmError("win-rate result needs prompts, wins, ties and losses (from `srlm winrate`)") from None
    if n <= 0:
        raise SrlmError("win-rate result has 0 prompts: nothing to compare")
    return {
        f"win_rate_vs_{against}": wins / n,
        f"adjusted_win_rate_vs_{against}": (wins + 0.5 * ties) / n,
        f"tie_rate_vs_{against}": ties / n,
        f"loss_rate_vs_{against}": losses / n,
    }


def pin_champion_metrics(metrics: Mapping[str, float], champion_version: str | None) -> dict[str, float]:
    """``<m>_vs_champion`` -> ``<m>_vs_v<N>``: a tag must say which champion it was measured against."""
    out = {}
    for key, value in metrics.items():
        if key.endswith("_vs_champion"):
            if champion_version is None:
                log.info("no champion yet: %s is not recorded", key)
                continue
            key = key[: -len("champion")] + f"v{champion_version}"
        out[key] = value
    return out


def tag_metrics(tags: Mapping[str, str]) -> dict[str, float]:
    out = {}
    for key, value in tags.items():
        if key.startswith(METRIC_TAG_PREFIX):
            try:
                out[key[len(METRIC_TAG_PREFIX):]] = float(value)
            except ValueError:
                continue
    return out


def evaluate_rule(
    rule: PromotionRule,
    challenger: Mapping[str, Any],
    champion: Mapping[str, Any],
    *,
    champion_is_parent: bool,
    champion_version: str | None = None,
) -> tuple[bool | None, str, dict[str, Any], list[str]]:
    """Apply ``rule`` to the challenger's and champion's metrics (``metric.*`` without the prefix).

    The head-to-head win rate is ``<metric>_vs_champion`` (fresh), else ``<metric>_vs_v<N>`` with N
    the champion's version, else ``<metric>_vs_previous`` when the champion is the challenger's
    parent. Returns (True/False, or None when it cannot be evaluated; the reason; the values
    compared; what is missing).
    """
    missing: list[str] = []
    compared: dict[str, Any] = {}
    reasons: list[str] = []
    checks: list[bool] = []

    fresh = f"{rule.metric}_vs_champion"
    pinned = f"{rule.metric}_vs_v{champion_version}" if champion_version else None
    previous = f"{rule.metric}_vs_previous"
    if fresh in challenger:
        win_key = fresh
    elif pinned and pinned in challenger:
        win_key = pinned
    elif champion_is_parent and previous in challenger:
        win_key = previous
    else:
        win_key = None
        options = " or ".join(k for k in (fresh, pinned, previous if champion_is_parent else None) if k)
        note = "" if champion_is_parent else f" ({previous} does not count: the champion is not its parent)"
        missing.append(f"challenger has no head-to-head win rate against the champion: {options}{note}")
    if win_key:
        value = float(challenger[win_key])
        ok = value >= rule.min_win_rate
        compared["win_rate"] = {"key": win_key, "challenger": value, "min": rule.min_win_rate, "ok": ok}
        checks.append(ok)
        reasons.append(f"{win_key} {value:.3f} {'>=' if ok else '<'} {rule.min_win_rate}")

    for part, metric, tolerance in (("rm", rule.rm_metric, rule.rm_tolerance),
                                    ("benchmark", rule.benchmark_metric, rule.benchmark_tolerance)):
        if not metric:
            continue
        mine, theirs = challenger.get(metric), champion.get(metric)
        if mine is None:
            missing.append(f"challenger has no {metric}")
        if theirs is None:
            missing.append(f"champion has no {metric}")
        if mine is not None and theirs is not None:
            drop = float(theirs) - float(mine)
            ok = drop <= tolerance + 1e-12
            compared[part] = {"metric": metric, "challenger": float(mine), "champion": float(theirs),
                              "tolerance": tolerance, "ok": ok}
            checks.append(ok)
            reasons.append(
                f"{metric} {float(mine):.3f} vs champion {float(theirs):.3f} "
                f"({'within' if ok else 'drops more than'} tolerance {tolerance})"
            )
    if missing:
        return None, "cannot evaluate the promotion rule: " + "; ".join(missing), compared, missing
    holds = all(checks)
    return holds, ("rule holds: " if holds else "rule does not hold: ") + "; ".join(reasons), compared, missing


def promotion_report(decision: Mapping[str, Any], fresh: Mapping[str, float]) -> str:
    """The gate's Markdown report of a decision (``srlm.model_registry.promote``'s result)."""
    lines = [
        "# Promotion gate",
        "",
        f"- Model: `{decision['name']}`",
        f"- Challenger: version {decision['challenger']}",
        f"- Champion before: {decision['champion_before'] or 'none'}; after: {decision['champion_after'] or 'none'}",
        f"- Promoted: **{'yes' if decision['promoted'] else 'no'}**",
        f"- Reason: {decision['reason']}",
        "",
        "Rule: " + ", ".join(f"{k} = {v!r}" for k, v in decision["rule"].items()),
    ]
    if fresh:
        lines += ["", "Head-to-head against the champion (measured by this gate): "
                  + ", ".join(f"{k} {v:.3f}" for k, v in sorted(fresh.items()))]
    return "\n".join(lines) + "\n"
