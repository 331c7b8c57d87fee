"""Components called directly (``component.python_func``) on real files, and the steps behind them.

Kubeflow pipelines-components style: the function KFP would run inside the container is called
here with artifacts pointing at temporary paths, so the body, the library call and the Metrics
output are exercised without a pipeline. MLflow parts use a real SQLite store.
"""

import json
import shutil
import socket
import sys
from pathlib import Path

import pytest
from kfp import dsl

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # components/ and pipelines/ live at the repository root
    sys.path.insert(0, str(ROOT))

import components  # noqa: E402
from components.images import IMAGES_FILE, image  # noqa: E402
from srlm import model_registry, stages, tracking  # noqa: E402
from srlm.errors import SrlmError  # noqa: E402
from srlm.io import read_jsonl, write_jsonl  # noqa: E402
from srlm.modeldir import write_lineage  # noqa: E402
from srlm.stagelog import to_kfp  # noqa: E402

OFF = {"enabled": False}


def art(cls, path):
    """An artifact at a local path, as the KFP executor would hand it to the component."""
    return cls(name=Path(path).name, uri=str(path))


@pytest.fixture(scope="module")
def mlflow_store(tmp_path_factory):
    """One SQLite MLflow store for the module (a new database takes seconds to migrate)."""
    root = tmp_path_factory.mktemp("mlflow")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{root / 'mlflow.db'}")
        tracking.ensure_experiment("components-test", (root / "artifacts").as_uri())
        yield root


def settings(name, **extra):
    return {"enabled": True, "experiment": "components-test", "model_name": name, **extra}


# --------------------------------------------------------------------------- images


def test_one_component_per_pipeline_stage_named_after_it_on_its_image():
    spec = json.loads(IMAGES_FILE.read_text())
    assert {n for n in components.__all__ if n not in ("image", "images_spec")} == set(stages.TASKS)
    for name in stages.TASKS:
        component = getattr(components, name)
        assert component.component_spec.name == name.replace("_", "-"), name
        expected = f"{spec['registry']}/{spec['images'][name]}:{spec['tag']}"
        assert component.component_spec.implementation.container.image == expected, name


def test_image_registry_and_tag_can_be_overridden(monkeypatch):
    monkeypatch.setenv("SRLM_REGISTRY", "registry.example.com/team/")
    monkeypatch.setenv("SRLM_TAG", "2.0")
    name = json.loads(IMAGES_FILE.read_text())["images"]["dpo"]
    assert image("dpo") == f"registry.example.com/team/{name}:2.0"
    with pytest.raises(KeyError, match="no image for stage"):
        image("nope")


def test_components_install_nothing_and_import_only_the_package():
    for name in stages.TASKS:
        container = getattr(components, name).component_spec.implementation.container
        command = " ".join(container.command)
        assert "pip install" not in command, name
        source = container.command[-1]
        imports = {line.split()[1].split(".")[0] for line in source.splitlines()
                   if line.strip().startswith(("import ", "from ")) and not line.strip().startswith("from __future__")}
        assert imports <= {"kfp", "srlm", "typing", "builtins"}, (name, imports)


# --------------------------------------------------------------------------- data components


def test_seed_data_component_writes_the_bundled_seed_set(tmp_path):
    seed, metrics = art(dsl.Dataset, tmp_path / "seed"), art(dsl.Metrics, tmp_path / "metrics")
    components.seed.python_func(data={"preset": "tiny"}, mlflow=OFF, kfp_run_id="t", seed=seed, metrics=metrics)
    assert len(read_jsonl(tmp_path / "seed" / "ift.jsonl", "ift")) == metrics.metadata["ift"] == 64
    assert len(read_jsonl(tmp_path / "seed" / "eft_eval.jsonl", "eft_eval")) == metrics.metadata["eft_eval"] > 0
    assert metrics.metadata["user_files"] == 0 and "wall_seconds" in metrics.metadata


def test_seed_data_component_takes_the_users_files(tmp_path, seed_dir):
    seed, metrics = art(dsl.Dataset, tmp_path / "seed"), art(dsl.Metrics, tmp_path / "metrics")
    files = {name: str(seed_dir / f"{name}.jsonl") for name in ("ift", "eft_train", "eft_eval")}
    components.seed.python_func(data={"files": files}, mlflow=OFF, kfp_run_id="t", seed=seed, metrics=metrics)
    assert sorted(p.name for p in (tmp_path / "seed").iterdir()) == ["eft_eval.jsonl", "eft_train.jsonl", "ift.jsonl"]
    assert metrics.metadata["user_files"] == 3


def judgements(path, scores):
    rows = [{"id": f"p{i}", "prompt": f"prompt {i}",
             "replies": [{"text": f"reply {i}.{j}", "judge_outputs": [f"Score: {s}"], "scores": [s], "mean": s}
                         for j, s in enumerate(row)]}
            for i, row in enumerate(scores)]
    write_jsonl(path, rows, "judgements")
    return path


def test_pairs_component_builds_best_vs_worst_pairs(tmp_path):
    src = art(dsl.Dataset, judgements(tmp_path / "judgements.jsonl", [[1, 4, 2], [3, 3, 3], [0, 5, 5]]))
    pairs, metrics = art(dsl.Dataset, tmp_path / "pairs.jsonl"), art(dsl.Metrics, tmp_path / "metrics")
    components.pairs.python_func(judging={"preset": "tiny"}, judgements=src, iteration=2, mlflow=OFF,
                                       kfp_run_id="t", pairs=pairs, metrics=metrics)
    built = read_jsonl(tmp_path / "pairs.jsonl", "pair")
    assert [(p["chosen"], p["rejected"]) for p in built] == [("reply 0.1", "reply 0.0"), ("reply 2.1", "reply 2.0")]
    assert metrics.metadata["pairs"] == 2 and metrics.metadata["ties_or_unpaired"] == 1


def test_pairs_component_with_no_pairs_fails_with_the_counts(tmp_path):
    src = art(dsl.Dataset, judgements(tmp_path / "judgements.jsonl", [[3, 3], [2, 2]]))
    with pytest.raises(SrlmError, match="0 preference pairs from 2 prompts"):
        components.pairs.python_func(judging={}, judgements=src, iteration=2, mlflow=OFF, kfp_run_id="t",
                                           pairs=art(dsl.Dataset, tmp_path / "pairs.jsonl"),
                                           metrics=art(dsl.Metrics, tmp_path / "m"))
    assert not (tmp_path / "pairs.jsonl").exists()


def test_sharded_sample_and_judge_components_merge_to_the_unsharded_output(tmp_path, tiny_model):
    """sample / judge with shard, shards; merge takes the collected list (any order)."""
    prompts = tmp_path / "prompts.jsonl"
    write_jsonl(prompts, [{"id": f"p{i}", "prompt": f"Say {'more ' * i}about {i}."} for i in range(6)], "prompt")
    sampling = {"preset": "tiny", "threads": 1, "candidates": {"n": 2, "max_new_tokens": 4, "batch_size": 4}}
    judging = {"preset": "tiny", "judge": {"scorer": "random"}}  # no model: judging is a seeded draw per reply
    common = {"iteration": 2, "mlflow": OFF, "kfp_run_id": "t"}

    def sample(name, **shard):
        components.sample.python_func(
            sampling=sampling, model=art(dsl.Model, tiny_model), prompts=art(dsl.Dataset, prompts), **common,
            candidates=art(dsl.Dataset, tmp_path / name), metrics=art(dsl.Metrics, tmp_path / f"{name}.m"), **shard)
        return art(dsl.Dataset, tmp_path / name)

    def judge(candidates, name, **shard):
        components.judge.python_func(
            judging=judging, model=art(dsl.Model, tiny_model), candidates=candidates, **common,
            judgements=art(dsl.Dataset, tmp_path / name), metrics=art(dsl.Metrics, tmp_path / f"{name}.m"), **shard)
        return art(dsl.Dataset, tmp_path / name)

    def merge(stage, parts, name):
        metrics = art(dsl.Metrics, tmp_path / f"{name}.m")
        components.merge.python_func(stage=stage, shard_files=parts, **common,
                                            merged=art(dsl.Dataset, tmp_path / name), metrics=metrics)
        return art(dsl.Dataset, tmp_path / name), metrics

    plain = sample("candidates")
    parts = [sample(f"candidates-{k}", shard=k, shards=3) for k in range(3)]
    merged, metrics = merge("sample", parts[::-1], "candidates-merged")
    assert Path(merged.path).read_bytes() == Path(plain.path).read_bytes()
    assert metrics.metadata["prompts"] == 6 and metrics.metadata["shards"] == 3
    judged = judge(plain, "judgements")
    jparts = [judge(merged, f"judgements-{k}", shard=k, shards=2) for k in range(2)]
    jmerged, jmetrics = merge("judge", jparts, "judgements-merged")
    assert Path(jmerged.path).read_bytes() == Path(judged.path).read_bytes()
    assert jmetrics.metadata["replies"] == 12 and jmetrics.metadata["shards"] == 2


# --------------------------------------------------------------------------- settings groups


def test_settings_groups_build_configs_from_preset_shared_keys_and_their_own_dict():
    config = stages.group_config("training", {"preset": "tiny", "threads": 2, "dpo": {"beta": 0.2}}, "dpo")
    assert (config.beta, config.threads, config.max_steps) == (0.2, 2, 30)
    assert stages.group_config("training", {}, "dpo").learning_rate == 1e-6  # paper defaults
    assert stages.group_config("evaluation", {"preset": "tiny"}, "promotion").metric == "adjusted_win_rate"
    with pytest.raises(SrlmError, match=r"training: unknown key\(s\) \['dpo_beta'\]"):
        stages.group_config("training", {"dpo_beta": 0.2}, "dpo")
    with pytest.raises(SrlmError, match=r"training.sft: .*unknown setting"):
        stages.group_config("training", {"sft": {"lr": 1}}, "sft")
    evaluate = stages.STAGES["evaluate"].configure({"preset": "tiny", "prompts": "p.jsonl"})
    assert set(evaluate) == {"rm", "winrate", "verify", "alpaca_eval", "mt_bench", "ifeval", "agreement",
                             "prompts"} and evaluate["winrate"].method == "rubric"


def test_to_kfp_logs_only_finite_numbers():
    metrics = dsl.Metrics(name="m", uri="/tmp/unused")
    to_kfp(metrics, {"a": 1, "b": {"c": 0.5}, "s": "text", "n": None, "flag": True, "nan": float("nan")})
    assert metrics.metadata == {"a": 1.0, "b.c": 0.5}


# --------------------------------------------------------------------------- validation


GROUPS = {"base_model": {"preset": "tiny"}, "data": {"preset": "tiny"}, "sampling": {"preset": "tiny"},
          "judging": {"preset": "tiny"}, "training": {"preset": "tiny"}, "evaluation": {"preset": "tiny"}}


def run_validate(tmp_path, mlflow, **changes):
    metrics = art(dsl.Metrics, tmp_path / "validate-metrics")
    groups = {**GROUPS, **changes}
    checked = components.validate.python_func(**groups, mlflow=mlflow, kfp_run_id="kfp-validate",
                                              base_model_kind="tiny", eft_build=False, iterations=3, hardware={},
                                              metrics=metrics)
    base_model_uri, _chat_template = checked
    return base_model_uri, metrics


def test_validate_passes_and_creates_the_pipeline_run(tmp_path, mlflow_store):
    uri, metrics = run_validate(tmp_path, settings("validated"))
    assert uri == "" and metrics.metadata["problems"] == 0 and metrics.metadata["checks"] > 10
    client = tracking.mlflow_client()
    experiment = client.get_experiment_by_name("components-test")
    parents = client.search_runs([experiment.experiment_id], "tags.kfp_run_id = 'kfp-validate'")
    logged = sorted(r.data.tags.get("stage", "parent") for r in parents)
    assert logged == ["parent", "validate"]


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_validate_reports_every_bad_input_before_any_gpu_work(tmp_path, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"http://127.0.0.1:{free_port()}")
    bad = {
        "data": {"preset": "tiny", "files": {"ift": str(tmp_path / "missing.jsonl")}},
        "evaluation": {"preset": "tiny", "promotion": {"metric": "accuracy"}},
        "judging": {"preset": "tiny", "judge": {"template": str(tmp_path / "rubric.txt")}},
    }
    with pytest.raises(SrlmError) as error:
        run_validate(tmp_path, settings("x"), **bad)
    message = str(error.value)
    assert "validation found 4 problem(s)" in message
    assert "missing.jsonl: no such file" in message
    assert "does not answer" in message and "127.0.0.1" in message
    assert "evaluation.promotion: config: metric: 'accuracy' is not allowed" in message
    assert "rubric.txt: judge template file not found" in message


def test_validate_reads_every_benchmarks_files_and_the_rules_benchmark_metric(tmp_path):
    broken = tmp_path / "questions.jsonl"
    broken.write_text('{"question_id": 1, "category": "writing", "turns": ["only one"]}\n')
    evaluation = {"preset": "tiny", "benchmarks": ["mt_bench", "alpaca_eval"],
                  "mt_bench": {"questions": str(broken)}, "alpaca_eval": {"references": str(tmp_path / "none.jsonl")},
                  "promotion": {"benchmark_metric": "ifeval_prompt_strict"}}
    with pytest.raises(SrlmError) as error:
        run_validate(tmp_path, OFF, evaluation=evaluation)
    message = str(error.value)
    assert "validation found 1 problem(s)" in message and "questions.jsonl: question 1 needs 'turns'" in message
    evaluation["mt_bench"] = {}
    with pytest.raises(SrlmError, match="none.jsonl: reference file not found .*no such file"):
        run_validate(tmp_path, OFF, evaluation=evaluation)
    evaluation["alpaca_eval"] = {}
    with pytest.raises(SrlmError, match=r"benchmark_metric='ifeval_prompt_strict' needs ifeval in evaluation.benchmarks"):
        run_validate(tmp_path, OFF, evaluation=evaluation)
    for bad, says in ((["mmlu"], r"unknown benchmark\(s\) \['mmlu'\]"), ("ifeval", "expected a list")):
        with pytest.raises(SrlmError, match=says):
            run_validate(tmp_path, OFF, evaluation={"preset": "tiny", "benchmarks": bad})
    with pytest.raises(SrlmError, match="benchmark_metric 'lc_win_rate' is no benchmark's"):
        run_validate(tmp_path, OFF, evaluation={"preset": "tiny", "promotion": {"benchmark_metric": "lc_win_rate"}})
    run_validate(tmp_path, OFF, evaluation={**evaluation, "benchmarks": ["mt_bench", "alpaca_eval", "ifeval"]})


def test_validate_rejects_a_judge_template_that_differs_from_the_one_trained_on(tmp_path):
    rubric = tmp_path / "rubric.txt"
    rubric.write_text("Rate {instruction} answered by {response}. Score: N")
    with pytest.raises(SrlmError, match="judge template differs between stages"):
        run_validate(tmp_path, OFF, judging={"judge": {"template": str(rubric)}})
    run_validate(tmp_path, OFF, judging={"judge": {"template": str(rubric)}},
                 training={"preset": "tiny", "sft": {"judge_template": str(rubric)}},
                 evaluation={"preset": "tiny", "rm": {"template": str(rubric)}})


def test_validate_says_when_the_promotion_rule_cannot_be_evaluated_against_the_champion(
    tmp_path, mlflow_store, tiny_model
):
    version = model_registry.register_model("no-metrics", str(tiny_model), 1)  # a champion without metric tags
    model_registry.promote("no-metrics", version)
    with pytest.raises(SrlmError, match=r"promotion rule cannot be evaluated: champion no-metrics version 1 has no "
                                        r"metric.pairwise_accuracy"):
        run_validate(tmp_path, settings("no-metrics"))
    run_validate(tmp_path, settings("no-metrics"), evaluation={"promotion": {"rm_metric": ""}})


def test_validate_hf_base_model_checks_the_directory(tmp_path, tiny_model):
    def validate_hf(uri, **base_model):
        return components.validate.python_func(
            **{**GROUPS, "base_model": {"uri": uri, **base_model}}, mlflow=OFF, kfp_run_id="k", base_model_kind="hf",
            eft_build=False, iterations=3, hardware={}, metrics=art(dsl.Metrics, tmp_path / "m"))[0]  # (base_model_uri, chat_template)

    assert validate_hf(str(tiny_model)) == str(tiny_model)
    assert validate_hf("s3://bucket/models/llama") == "s3://bucket/models/llama"
    with pytest.raises(SrlmError, match="model directory not found"):
        validate_hf(str(tmp_path / "nothing"))
    with pytest.raises(SrlmError, match="base_model.uri is empty"):
        validate_hf("")


# --------------------------------------------------------------------------- registry


def evaluation_details(path, **metrics):
    path.mkdir(parents=True, exist_ok=True)
    summary = {"pairwise_accuracy": 0.6, "adjusted_win_rate_vs_previous": 0.55, "win_rate_vs_previous": 0.5,
               "mean_length": 80.0, "judge_parse_failure_rate": 0.1, **metrics}
    (path / "summary.json").write_text(json.dumps(summary))
    return art(dsl.Dataset, path)


def trained_copy(tiny_model, dest, seed_dir):
    """A model directory with a DPO-style lineage (parent, data digest), without training anything."""
    shutil.copytree(tiny_model, dest)
    write_lineage(dest, stage="dpo", parent=tiny_model, data={"pairs": seed_dir / "ift.jsonl"}, metrics={"pairs": 7})
    return dest


def test_register_component_registers_by_reference_with_lineage_and_alias(tmp_path, mlflow_store, tiny_model, seed_dir):
    mlflow = settings("registered")
    m2 = trained_copy(tiny_model, tmp_path / "m2", seed_dir)
    versions = []
    for t, model in ((1, tiny_model), (2, m2)):
        metrics = art(dsl.Metrics, tmp_path / f"metrics{t}")
        versions.append(components.register.python_func(
            model=art(dsl.Model, model), evaluation=evaluation_details(tmp_path / f"eval{t}"), iteration=t,
            parent_version=versions[-1] if versions else "", mlflow=mlflow, kfp_run_id="kfp-reg", metrics=metrics))
        assert metrics.metadata["pairwise_accuracy"] == 0.6
    assert versions == ["1", "2"]
    client = tracking.mlflow_client()
    assert {k: str(v) for k, v in client.get_registered_model("registered").aliases.items()} == {
        "iter-1": "1", "iter-2": "2"}
    mv = client.get_model_version("registered", "2")
    assert mv.source == str(m2.resolve())  # by reference: no copy of the weights
    assert mv.tags["parent_version"] == "1" and mv.tags["iteration"] == "2" and mv.tags["kfp_run_id"] == "kfp-reg"
    assert mv.tags["lineage.stage"] == "dpo" and mv.tags["lineage.parent"] == str(tiny_model)
    assert mv.tags["data_digest.pairs"].startswith("sha256:")
    assert float(mv.tags["metric.adjusted_win_rate_vs_previous"]) == 0.55 and float(mv.tags["metric.pairs"]) == 7


def test_register_with_mlflow_disabled_returns_no_version(tmp_path, tiny_model):
    version = components.register.python_func(
        model=art(dsl.Model, tiny_model), evaluation=evaluation_details(tmp_path / "eval"), iteration=1,
        parent_version="", mlflow=OFF, kfp_run_id="k", metrics=art(dsl.Metrics, tmp_path / "m"))
    assert version == ""


def test_gate_makes_the_first_challenger_champion(tmp_path, mlflow_store, tiny_model):
    version = model_registry.register_model("gate-first", str(tiny_model), 1, metrics={"pairwise_accuracy": 0.5})
    report, metrics = art(dsl.Markdown, tmp_path / "promotion.md"), art(dsl.Metrics, tmp_path / "m")
    tracking.pipeline_run("components-test", "kfp-gate")
    components.gate.python_func(
        evaluation={"preset": "tiny"}, model=art(dsl.Model, tiny_model), judge_model=art(dsl.Model, tiny_model),
        eft=art(dsl.Dataset, tmp_path), version=version, mlflow=settings("gate-first"), kfp_run_id="kfp-gate",
        report=report, run_report=art(dsl.HTML, tmp_path / "run_report.html"), metrics=metrics)
    aliases = {k: str(v) for k, v in tracking.mlflow_client().get_registered_model("gate-first").aliases.items()}
    assert aliases["champion"] == aliases["challenger"] == version
    assert (metrics.metadata["promoted"], metrics.metadata["compared_to_champion"]) == (1.0, 0.0)
    assert "no champion yet" in (tmp_path / "promotion.md").read_text()
    # this KFP run logged no evaluation: the report says so for every plot, and is logged with the gate's run
    page = (tmp_path / "run_report.html").read_text()
    assert metrics.metadata["report_plots"] == 0.0 and "<b>promoted</b>" in page and "Not measured" in page
    client = tracking.mlflow_client()
    runs = client.search_runs([client.get_experiment_by_name("components-test").experiment_id],
                              "tags.kfp_run_id = 'kfp-gate' and tags.stage = 'gate'")
    assert [a.path for a in client.list_artifacts(runs[0].info.run_id)] == ["promotion.md", "run_report.html"]


@pytest.mark.slow
def test_gate_plays_an_earlier_champion_before_deciding(tmp_path, mlflow_store, tiny_model, sft_model, seed_dir):
    """A champion from an earlier run is not the challenger's parent: the gate measures win rate against it."""
    name = "gate-h2h"
    old = model_registry.register_model(name, str(tiny_model), 3, metrics={"pairwise_accuracy": 0.1})
    model_registry.promote(name, old)
    new = model_registry.register_model(name, str(sft_model), 3, parent_version="99", metrics={"pairwise_accuracy": 0.2})
    report, metrics = art(dsl.Markdown, tmp_path / "promotion.md"), art(dsl.Metrics, tmp_path / "m")
    tracking.pipeline_run("components-test", "kfp-h2h")
    evaluation = {"preset": "tiny", "winrate": {"max_prompts": 4}, "promotion": {"min_win_rate": 0.0}}
    components.gate.python_func(
        evaluation=evaluation, model=art(dsl.Model, sft_model), judge_model=art(dsl.Model, sft_model),
        eft=art(dsl.Dataset, seed_dir), version=new, mlflow=settings(name), kfp_run_id="kfp-h2h",
        report=report, run_report=art(dsl.HTML, tmp_path / "run_report.html"), metrics=metrics)
    assert metrics.metadata["compared_to_champion"] == 1.0
    assert 0.0 <= metrics.metadata["adjusted_win_rate_vs_champion"] <= 1.0
    aliases = {k: str(v) for k, v in tracking.mlflow_client().get_registered_model(name).aliases.items()}
    assert aliases["challenger"] == new and aliases["champion"] == new  # min_win_rate 0: the rule holds
    assert "adjusted_win_rate_vs_champion" in (tmp_path / "promotion.md").read_text()
