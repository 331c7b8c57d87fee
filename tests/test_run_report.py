"""The run report (srlm.run_report) from a real MLflow store, looked at the way a person would: rendered by a real
headless Chromium, which decodes every plot (its DOM after load) and draws them (its screenshot holds the plots'
colours; a page whose images are broken does not)."""

from __future__ import annotations

import re
import shutil
import subprocess

import pytest

from srlm import run_report, tracking

EXPERIMENT = "srlm-report"
RUN = "kfp-run-report"


def evaluation_metrics(t: int) -> dict[str, float]:
    """What the evaluate stage logs for M(t), shaped as it logs it (a subset: one of each family)."""
    return {
        "pairwise_accuracy": 0.5 + 0.05 * t, "five_best_accuracy": 0.4 + 0.05 * t, "exact_match": 0.1 * t,
        "spearman": 0.2 * t, "kendall_tau": 0.15 * t, "judge_alpha_ordinal": 0.6 + 0.05 * t, "judge_ece": 0.2 - 0.03 * t,
        "adjusted_win_rate_vs_previous": 0.5 + 0.1 * t, "win_rate_vs_previous": 0.4 + 0.1 * t,
        "tie_rate_vs_previous": 0.2, "mean_length": 500.0 * t, "mean_tokens": 120.0 * t, "mean_tokens_previous": 100.0 * t,
        "alpaca_eval_win_rate": 0.1 * t, "alpaca_eval_win_rate_low": 0.1 * t - 0.05, "alpaca_eval_win_rate_high": 0.1 * t + 0.05,
        "alpaca_eval_lc_win_rate": 0.12 * t, "alpaca_eval_lc_win_rate_low": 0.12 * t - 0.06,
        "alpaca_eval_lc_win_rate_high": 0.12 * t + 0.06, "alpaca_eval_mean_length": 1000.0 + 500 * t,
        "ifeval_prompt_strict": 0.3 + 0.02 * t, "ifeval_instruction_loose": 0.4 + 0.02 * t,
        "mt_bench_score": 5.0 + t / 2, "mt_bench_score_turn_1": 5.5 + t / 2, "mt_bench_category_writing": 6.0 + t / 3,
        "mt_bench_category_math": 3.0 + t / 3, "judge_tau_vs_previous": 0.7 if t > 1 else float("nan"),
    }


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    root = tmp_path_factory.mktemp("report_store")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{root / 'mlflow.db'}")
        tracking.ensure_experiment(EXPERIMENT)
        tracking.pipeline_run(EXPERIMENT, RUN, params={"sampling": {"candidates": {"n": 4}}})
        for t in (1, 2, 3):
            params = {"path.judge_model": "/models/m1", "benchmarks": "alpaca_eval,mt_bench,ifeval",
                      "alpaca_eval": {"judge_base_url": "http://judge:8000/v1", "judge_model": "judge-70b"}}
            if t == 3:  # a retried task: the first try's numbers are superseded by the newer run's
                tracking.log_stage(EXPERIMENT, RUN, "evaluate", params, {"pairwise_accuracy": 0.01}, iteration=t)
            tracking.log_stage(EXPERIMENT, RUN, "evaluate", params, evaluation_metrics(t), iteration=t)
            if t > 1:
                tracking.log_stage(EXPERIMENT, RUN, "pairs", {}, {
                    "chosen_mean_chars": 400.0 * t, "rejected_mean_chars": 300.0 * t, "judge_alpha_ordinal": 0.5,
                    "all_tie_share": 0.1 * t, "score_length_spearman": 0.3}, iteration=t)
        tracking.log_stage(EXPERIMENT, "another-run", "evaluate", {}, {"pairwise_accuracy": 0.99}, iteration=1)
        table, judges, params = run_report.collect(EXPERIMENT, RUN)
        page = root / "report.html"
        stats = run_report.write(page, EXPERIMENT, RUN, title="Run report", decision={"promoted": True, "reason": "r"})
    return {"table": table, "judges": judges, "params": params, "page": page, "stats": stats, "root": root}


def test_the_numbers_come_from_this_runs_stages_newest_try_first(store):
    table = store["table"]
    assert sorted(table) == [1, 2, 3]
    assert table[3]["pairwise_accuracy"] == pytest.approx(0.65)  # not the superseded 0.01, not another run's 0.99
    assert table[2]["pairs_chosen_mean_chars"] == 800.0 and "pairs_chosen_mean_chars" not in table[1]
    assert store["judges"] == ["fixed judge model /models/m1; alpaca_eval: judge-70b at http://judge:8000/v1"]
    assert store["params"]["sampling.candidates.n"] == "4"


def test_every_family_is_plotted_with_the_judge_the_digest_and_every_number(store):
    page = store["page"].read_text()
    assert store["stats"] == {"report_models": 3, "report_plots": len(run_report.FAMILIES) + 1}
    assert "Not measured" not in page
    assert "judge-70b at http://judge:8000/v1" in page and "fixed judge model /models/m1" in page
    assert run_report.settings_digest(store["params"]) in page
    for key in evaluation_metrics(2):
        assert f"<td>{key}</td>" in page
    assert "<td>alpaca_eval_lc_win_rate</td><td>0.12</td><td>0.24</td><td>0.36</td>" in page
    assert "<b>promoted</b>" in page


def test_a_family_without_numbers_says_not_measured():
    page = run_report.render({1: {"pairwise_accuracy": 0.5}, 2: {"pairwise_accuracy": 0.6}}, {}, title="t")
    assert page.count('<img class="plot"') == 1
    assert page.count("Not measured in this run.") == len(run_report.FAMILIES)  # the other families and categories


CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
# matplotlib's first colours: the lines and bars of every plot are drawn in them; the rest of the page is grey text
PLOT_COLOURS = [(0x1F, 0x77, 0xB4), (0xFF, 0x7F, 0x0E), (0x2C, 0xA0, 0x2C)]
PROBE = """<script>window.addEventListener('load', () => {
  const images = [...document.querySelectorAll('img.plot')];
  document.body.dataset.decoded = images.filter(i => i.complete && i.naturalWidth > 0).length;
  document.body.dataset.images = images.length;
});</script></body>"""


def chromium(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", *args],
                          capture_output=True, text=True, timeout=120, check=True)


def plot_pixels(png) -> int:
    import numpy as np
    from PIL import Image

    with Image.open(png) as image:
        rgb = np.asarray(image.convert("RGB"), dtype=np.int16)
    return int(sum((np.abs(rgb - np.array(c)).max(axis=-1) <= 12).sum() for c in PLOT_COLOURS))


@pytest.mark.skipif(CHROMIUM is None, reason="chromium not installed (apt-get install chromium; .ci/run installs it)")
def test_a_real_browser_decodes_and_draws_every_plot(store, tmp_path):
    probed = tmp_path / "probed.html"
    probed.write_text(store["page"].read_text().replace("</body>", PROBE))
    dom = chromium("--virtual-time-budget=5000", "--dump-dom", probed.as_uri()).stdout
    plots = store["stats"]["report_plots"]
    assert re.search(rf'data-decoded="{plots}"', dom) and re.search(rf'data-images="{plots}"', dom), dom[:500]

    shot = tmp_path / "report.png"
    chromium("--window-size=1200,7000", f"--screenshot={shot}", store["page"].as_uri())
    drawn = plot_pixels(shot)
    # the same page with its images broken (the data cut short): the browser draws no plot
    broken = tmp_path / "broken.html"
    broken.write_text(re.sub(r"base64,[^\"]{200}", "base64,", store["page"].read_text()))
    broken_shot = tmp_path / "broken.png"
    chromium("--window-size=1200,7000", f"--screenshot={broken_shot}", broken.as_uri())
    # measured: 101,377 plot-coloured pixels for 9 plots (about 11,000 each) and 0 with the images broken; 2,000 per
    # plot leaves a factor 5 for another browser build's anti-aliasing, 100 for the page's own few coloured pixels
    assert drawn > 2000 * plots and plot_pixels(broken_shot) < 100, (drawn, plot_pixels(broken_shot))
