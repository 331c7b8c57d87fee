"""The compiled pipeline: golden YAML, graph shape, task settings, and a local end-to-end run.

The graph tests read the committed YAML (what a cluster runs), not the Python definition.
"""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # components/ and pipelines/ live at the repository root
    sys.path.insert(0, str(ROOT))

from pipelines import compile as pc  # noqa: E402
from pipelines.settings import GROUPS  # noqa: E402
from srlm.stages import TASKS  # noqa: E402

COMPILED = ROOT / "pipelines" / "compiled"
SDK_LINE = re.compile(r"^\s*sdkVersion: kfp-[\w.]+\s*$", re.MULTILINE)
ITERATION_ORDER = ["prompts", "sample", "judge", "pairs", "dpo", "evaluate", "register"]


def strip_sdk(text):
    return SDK_LINE.sub("", text)


def load(path):
    spec, *platform = yaml.safe_load_all(Path(path).read_text())
    return spec, (platform[0] if platform else {})


@pytest.fixture(scope="module")
def cluster():
    return load(COMPILED / "self_rewarding.yaml")


@pytest.fixture(scope="module")
def tiny():
    return load(COMPILED / "self_rewarding_tiny.yaml")


def base(name):
    """comp-sft-2 / sft-2 / comp-merge-2-2 / comp-tiny-model -> sft / merge / tiny-model."""
    return re.sub(r"(-\d+)+$", "", name.removeprefix("comp-"))


def stage_of(task):
    """The registry stage a container task runs: its component is named after it."""
    return base(task["componentRef"]["name"]).replace("-", "_")


def sub_dags(spec, prefix=""):
    """{display name: (task name, task)} of the root's sub-pipeline tasks whose display name starts with ``prefix``."""
    return {t["taskInfo"]["name"]: (n, t) for n, t in tasks_of(spec).items()
            if "dag" in spec["components"][t["componentRef"]["name"]] and t["taskInfo"]["name"].startswith(prefix)}


def body_dag(spec):
    """The run's body: the DAG inside the root's exit handler."""
    handler = next(t for t in spec["root"]["dag"]["tasks"].values() if t["taskInfo"]["name"] == "Self-rewarding run")
    return spec["components"][handler["componentRef"]["name"]]["dag"]


def tasks_of(spec, component=None):
    """The tasks of ``component``'s DAG (default: the run's body)."""
    dag = body_dag(spec) if component is None else spec["components"][component]["dag"]
    return dag["tasks"]


def container_tasks(spec):
    """(dag name, task name, task) for every task that runs a container, in the root DAG and the sub-DAGs."""
    out = []
    dags = [("root", spec["root"]["dag"])] + [(n, c["dag"]) for n, c in spec["components"].items() if "dag" in c]
    for dag_name, dag in dags:
        for name, task in dag["tasks"].items():
            label = spec["components"][task["componentRef"]["name"]].get("executorLabel")
            if label and "container" in spec["deploymentSpec"]["executors"][label]:  # not the importer
                out.append((dag_name, name, task))
    return out


def executor(spec, task):
    label = spec["components"][task["componentRef"]["name"]]["executorLabel"]
    return label, spec["deploymentSpec"]["executors"][label]


def ancestors(tasks, name):
    seen, todo = set(), list(tasks[name].get("dependentTasks", []))
    while todo:
        dep = todo.pop()
        if dep not in seen:
            seen.add(dep)
            todo.extend(tasks[dep].get("dependentTasks", []))
    return seen


def by_display(tasks):
    return {t["taskInfo"]["name"]: name for name, t in tasks.items()}


# --------------------------------------------------------------------------- golden YAML


def test_compiled_yaml_is_committed_and_current(tmp_path):
    """`make pipeline` output must be committed: recompile and compare (SDK version line ignored)."""
    pc.compile_all(tmp_path)
    for name in pc.OUTPUTS.values():
        committed = COMPILED / name
        assert committed.is_file(), f"{committed} missing: run `make pipeline` and commit it"
        fresh = (tmp_path / name).read_text()
        assert strip_sdk(committed.read_text()) == strip_sdk(fresh), (
            f"{committed} is stale: run `make pipeline` and commit the result")


def test_compile_is_deterministic_across_processes(tmp_path):
    for seed in ("1", "2"):
        subprocess.run([sys.executable, "-m", "pipelines.compile", "--out-dir", str(tmp_path / seed)], cwd=ROOT,
                       check=True, capture_output=True, env={**os.environ, "PYTHONHASHSEED": seed})
    for name in pc.OUTPUTS.values():
        assert (tmp_path / "1" / name).read_text() == (tmp_path / "2" / name).read_text()


# --------------------------------------------------------------------------- graph


def test_parameters_are_the_settings_groups(cluster, tiny):
    for (spec, _), preset in ((cluster, "paper"), (tiny, "tiny")):
        params = spec["root"]["inputDefinitions"]["parameters"]
        assert sorted(params) == sorted(GROUPS)
        assert {p["parameterType"] for p in params.values()} == {"STRUCT"}
        assert all(len(p.get("description", "")) > 40 for p in params.values())  # the Args: docs the KFP UI shows
        assert params["training"]["defaultValue"] == {"preset": preset}


def test_the_run_is_closed_by_an_exit_handler_however_it_ends(cluster, tiny):
    """The root holds the body in an exit handler and "Close the run", which runs after it whatever its state and
    gets its final status."""
    for spec, _ in (cluster, tiny):
        root = spec["root"]["dag"]["tasks"]
        assert sorted(t["taskInfo"]["name"] for t in root.values()) == ["Close the run", "Self-rewarding run"]
        closing = root["finalize"]
        handler = next(n for n, t in root.items() if t["taskInfo"]["name"] == "Self-rewarding run")
        assert closing["triggerPolicy"]["strategy"] == "ALL_UPSTREAM_TASKS_COMPLETED"
        assert closing["dependentTasks"] == [handler]
        assert closing["inputs"]["parameters"]["status"] == {"taskFinalStatus": {"producerTask": handler}}


def test_validation_comes_first_and_everything_depends_on_it(cluster, tiny):
    for spec, _ in (cluster, tiny):
        tasks = tasks_of(spec)
        roots = [n for n, t in tasks.items() if not t.get("dependentTasks")]
        assert roots == ["validate"]
        for name in tasks:
            if name != "validate":
                assert "validate" in ancestors(tasks, name), name


def test_root_reads_validate_base_model_seed_iterations_gate(cluster, tiny):
    for spec, _ in (cluster, tiny):
        tasks = tasks_of(spec)
        named = by_display(tasks)
        base_model = "M0: import the base model" if spec is cluster[0] else "M0: build the tiny model"
        order = ["Validate inputs and settings", base_model, "Seed: M1", "Iteration 2", "Iteration 3", "Promotion gate"]
        assert sorted(named) == sorted(order)
        for earlier, later in zip(order, order[1:]):
            assert named[earlier] in ancestors(tasks, named[later]), (earlier, later)
    # the importer takes the base model URI that validation checked
    tasks = tasks_of(cluster[0])
    importer = tasks[by_display(tasks)["M0: import the base model"]]
    assert importer["inputs"]["parameters"]["uri"]["taskOutputParameter"]["producerTask"] == "validate"


def test_seed_sub_dag_order_with_eft_build(cluster):
    spec, _ = cluster
    (_, seed), = sub_dags(spec, "Seed").values()
    inner = tasks_of(spec, seed["componentRef"]["name"])
    named = by_display(inner)
    order = ["Seed data", "SFT baseline (IFT only)", "EFT build", "M1: seed SFT (IFT + EFT)", "Evaluate M1",
             "Register M1"]
    assert sorted(named) == sorted(order)
    for earlier, later in zip(order, order[1:]):
        assert named[earlier] in ancestors(inner, named[later]), (earlier, later)


def test_tiny_variant_builds_the_base_model_and_skips_the_eft_build(tiny):
    spec, _ = tiny
    (_, seed), = sub_dags(spec, "Seed").values()
    named = by_display(tasks_of(spec, seed["componentRef"]["name"]))
    assert sorted(named) == ["Evaluate M1", "M1: seed SFT (IFT + EFT)", "Register M1", "Seed data"]


def test_one_sub_dag_per_dpo_round_in_order(cluster, tiny):
    for spec, _ in (cluster, tiny):
        tasks = tasks_of(spec)
        rounds = sub_dags(spec, "Iteration")
        assert sorted(rounds) == ["Iteration 2", "Iteration 3"]
        (n2, t2), (n3, t3) = rounds["Iteration 2"], rounds["Iteration 3"]
        assert n2 in t3["dependentTasks"]
        assert t2["inputs"]["parameters"]["iteration"]["runtimeValue"]["constant"] == 2
        assert t3["inputs"]["parameters"]["iteration"]["runtimeValue"]["constant"] == 3
        # M(t-1) and its registry version come from the previous round
        assert t3["inputs"]["artifacts"]["model"]["taskOutputArtifact"]["producerTask"] == n2
        assert t3["inputs"]["parameters"]["parent_version"]["taskOutputParameter"]["producerTask"] == n2
        for _, task in rounds.values():
            inner = tasks_of(spec, task["componentRef"]["name"])
            names = {base(n): n for n in inner}
            assert sorted(names) == sorted(ITERATION_ORDER)
            for earlier, later in zip(ITERATION_ORDER, ITERATION_ORDER[1:]):
                assert names[earlier] in ancestors(inner, names[later]), (earlier, later)
        gate = next(t for t in tasks.values() if t["taskInfo"]["name"] == "Promotion gate")
        assert n3 in gate["dependentTasks"]


def test_iterations_is_a_compile_time_setting(tmp_path):
    for iterations, expected in ((4, ["Iteration 2", "Iteration 3", "Iteration 4"]), (1, [])):
        out = pc.compile_pipeline(pc.settings_for("tiny", {"iterations": iterations}), tmp_path / f"{iterations}.yaml")
        spec, _ = load(out)
        tasks = tasks_of(spec)
        assert sorted(sub_dags(spec, "Iteration")) == expected
        named = by_display(tasks)
        gate = tasks[named["Promotion gate"]]
        last = named["Seed: M1"] if iterations == 1 else named[f"Iteration {iterations}"]
        assert gate["inputs"]["parameters"]["version"]["taskOutputParameter"]["producerTask"] == last


def test_shards_fan_out_sampling_and_judging_in_every_round(tmp_path, cluster, tiny):
    """K = 3: per round, ParallelFor over shards 0..2 around sampling, a merge, the same around judging, a merge
    (each shard a GPU task, the merges CPU tasks); K = 1 (the committed YAMLs) has no loop and no merge."""
    for spec, _ in (cluster, tiny):
        for name, comp in spec["components"].items():
            assert not name.startswith(("comp-for-loop", "comp-merge")), name
            for task in comp.get("dag", {}).get("tasks", {}).values():
                assert "parameterIterator" not in task and "shard" not in task["inputs"].get("parameters", {})
    out = pc.compile_pipeline(pc.settings_for("cluster", {"shards": 3}), tmp_path / "k3.yaml")
    spec, platform = load(out)
    k8s = platform["platforms"]["kubernetes"]["deploymentSpec"]["executors"]
    rounds = [t for t in tasks_of(spec).values() if t["taskInfo"]["name"].startswith("Iteration ")]
    assert len(rounds) == 2
    for round_task in rounds:
        inner = tasks_of(spec, round_task["componentRef"]["name"])
        names = {base(n) if not n.startswith("merge") else n: n for n in inner}
        loops = {t["taskInfo"]["name"]: (n, t) for n, t in inner.items() if "parameterIterator" in t}
        assert sorted(loops) == ["Sample candidates: 3 shards", "Self-judge: 3 shards"]
        merges = {t["inputs"]["parameters"]["stage"]["runtimeValue"]["constant"]: (n, t)
                  for n, t in inner.items() if base(n) == "merge"}
        assert sorted(merges) == ["judge", "sample"]
        order = [names["prompts"], loops["Sample candidates: 3 shards"][0], merges["sample"][0],
                 loops["Self-judge: 3 shards"][0], merges["judge"][0], names["pairs"]]
        for earlier, later in zip(order, order[1:]):
            assert earlier in ancestors(inner, later), (earlier, later)
        for (loop_name, loop), (kind, component, output) in zip(
            (loops["Sample candidates: 3 shards"], loops["Self-judge: 3 shards"]),
            (("sample", "sample", "candidates"), ("judge", "judge", "judgements")),
        ):
            assert json.loads(loop["parameterIterator"]["items"]["raw"]) == [0, 1, 2]
            body = tasks_of(spec, loop["componentRef"]["name"])
            (shard_name, shard_task), = body.items()
            assert base(shard_name) == component
            params = shard_task["inputs"]["parameters"]
            assert params["shard"]["componentInputParameter"] == loop["parameterIterator"]["itemInput"]
            assert params["shards"]["runtimeValue"]["constant"] == 3
            label, ex = executor(spec, shard_task)
            assert int(ex["container"]["resources"]["accelerator"]["resourceCount"]) == 1
            assert k8s[label]["nodeSelector"]["labels"] == {"nvidia.com/gpu.present": "true"}
            # the merge takes the collected shard outputs (an artifact list) of that loop
            merge_name, merge = merges[kind]
            source = merge["inputs"]["artifacts"]["shard_files"]["taskOutputArtifact"]
            assert source["producerTask"] == loop_name
            loop_component = spec["components"][loop["componentRef"]["name"]]
            assert loop_component["outputDefinitions"]["artifacts"][source["outputArtifactKey"]]["isArtifactList"] is True
            assert loop_component["dag"]["outputs"]["artifacts"][source["outputArtifactKey"]]["artifactSelectors"] == [
                {"outputArtifactKey": output, "producerSubtask": shard_name}]
            assert spec["components"][merge["componentRef"]["name"]]["inputDefinitions"]["artifacts"][
                "shard_files"]["isArtifactList"] is True
            merge_label, merge_ex = executor(spec, merge)
            assert "accelerator" not in merge_ex["container"].get("resources", {})
            assert "nodeSelector" not in k8s[merge_label] and "tolerations" not in k8s[merge_label]
        # the judge shards read the merged candidates; pairs read the merged judgements
        judge_body = tasks_of(spec, loops["Self-judge: 3 shards"][1]["componentRef"]["name"])
        assert loops["Self-judge: 3 shards"][1]["inputs"]["artifacts"][
            next(iter(judge_body.values()))["inputs"]["artifacts"]["candidates"]["componentInputArtifact"]
        ]["taskOutputArtifact"] == {"outputArtifactKey": "merged", "producerTask": merges["sample"][0]}
        assert inner[names["pairs"]]["inputs"]["artifacts"]["judgements"]["taskOutputArtifact"] == {
            "outputArtifactKey": "merged", "producerTask": merges["judge"][0]}
    assert TASKS["merge"].resources == "cpu" and TASKS["merge"].cached


def test_shards_setting_is_validated():
    assert pc.settings_for("tiny").shards == pc.settings_for("cluster").shards == 1
    for bad in (0, -2, True, 1.5, "2"):
        with pytest.raises(ValueError, match="shards must be an integer >= 1"):
            pc.settings_for("cluster", {"shards": bad})


def test_every_component_source_loads_on_its_own_as_the_executor_loads_it(tmp_path, cluster):
    """KFP ships only a component function's source (after kfp/typing star imports) to the container: a name
    defined beside the function in components/ (a NamedTuple class, a helper) is missing there."""
    spec, _ = cluster
    from kfp.dsl import utils

    for label, executor in spec["deploymentSpec"]["executors"].items():
        container = executor.get("container")
        if not container or "--function_to_execute" not in container.get("args", []):
            continue  # the importer
        folder = tmp_path / label
        folder.mkdir()
        (folder / "ephemeral_component.py").write_text(container["command"][-1])
        module = utils.load_module("ephemeral_component", str(folder))
        function = container["args"][container["args"].index("--function_to_execute") + 1]
        assert callable(getattr(module, function)), label


def test_every_task_runs_its_stages_image_from_images_json(cluster, tiny):
    images = json.loads((ROOT / "images" / "images.json").read_text())
    for spec, _ in (cluster, tiny):
        for _, name, task in container_tasks(spec):
            _, ex = executor(spec, task)
            key = stage_of(task)
            assert ex["container"]["image"] == f"{images['registry']}/{images['images'][key]}:{images['tag']}", name
            assert "pip install" not in " ".join(ex["container"]["command"]), name


def test_cluster_tasks_are_retried_with_backoff_but_validation_is_not(cluster, tiny):
    """A preempted node or an evicted pod costs a retry, not the run (register is idempotent per run and M(t))."""
    for dag, name, task in container_tasks(cluster[0]):
        policy = task.get("retryPolicy")
        if stage_of(task) == "validate":
            assert policy is None
        else:
            assert policy == {"maxRetryCount": 2, "backoffDuration": "60s", "backoffFactor": 2.0,
                              "backoffMaxDuration": "3600s"}, (dag, name)
    assert not any("retryPolicy" in task for _, _, task in container_tasks(tiny[0]))  # kfp.local: no retries
    with pytest.raises(ValueError, match="retries must be >= 0"):
        pc.settings_for("cluster", {"retries": -1})


def test_caching_only_for_deterministic_tasks(cluster, tiny):
    for spec, _ in (cluster, tiny):
        for dag, name, task in container_tasks(spec):
            cached = task.get("cachingOptions", {}).get("enableCache", False)
            assert cached == TASKS[stage_of(task)].cached, (dag, name)
    # deterministic given their inputs and seeds (training included: a rerun must not redo hours of GPU work);
    # not the tasks with side effects on MLflow's registry or that check the world as it is now
    assert {name for name, stage in TASKS.items() if not stage.cached} == {"validate", "register", "gate", "finalize"}


def test_cluster_tasks_read_the_run_id_from_their_pod_so_the_cache_can_hit_across_runs(cluster, tiny):
    """KFP's cache key holds every input value: a run id input would make every run's key new. On the cluster the
    run id comes from the pod's pipeline/runid label (downward API); kfp.local (no pods, no cache) passes it."""
    spec, platform = cluster
    k8s = platform["platforms"]["kubernetes"]["deploymentSpec"]["executors"]
    for _, name, task in container_tasks(spec):
        assert task["inputs"]["parameters"]["kfp_run_id"]["runtimeValue"]["constant"] == "", name
        label, _ = executor(spec, task)
        assert {"name": "KFP_RUN_ID", "fieldPath": "metadata.labels['pipeline/runid']"} in k8s[label]["fieldPathAsEnv"]
    tiny_spec, _ = tiny
    for _, name, task in container_tasks(tiny_spec):
        assert task["inputs"]["parameters"]["kfp_run_id"]["runtimeValue"]["constant"] == "{{$.pipeline_job_uuid}}", name


def test_gpu_tasks_request_gpus_with_tolerations_and_node_selector(cluster, tiny):
    spec, platform = cluster
    k8s = platform["platforms"]["kubernetes"]["deploymentSpec"]["executors"]
    gpu_stages = {name for name, stage in TASKS.items() if stage.resources != "cpu"}
    assert {"sft", "dpo", "sample", "judge", "prompts", "evaluate"} <= gpu_stages
    seen = set()
    for _, name, task in container_tasks(spec):
        stage = stage_of(task)
        label, ex = executor(spec, task)
        accelerator = ex["container"].get("resources", {}).get("accelerator")
        if stage in gpu_stages:
            seen.add(stage)
            assert accelerator["resourceType"] == "nvidia.com/gpu" and int(accelerator["resourceCount"]) >= 1, name
            assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in k8s[label]["tolerations"]
            assert k8s[label]["nodeSelector"]["labels"] == {"nvidia.com/gpu.present": "true"}
        else:
            assert accelerator is None and not {"nodeSelector", "tolerations"} & set(k8s[label]), name
    assert seen == gpu_stages
    # the tiny variant runs on a CPU: no accelerator anywhere
    tiny_spec, _ = tiny
    assert all("accelerator" not in executor(tiny_spec, t)[1]["container"].get("resources", {})
               for _, _, t in container_tasks(tiny_spec))


def test_mlflow_uri_reaches_every_task_as_an_env_var(cluster):
    spec, _ = cluster
    for _, name, task in container_tasks(spec):
        env = {e["name"]: e["value"] for e in executor(spec, task)[1]["container"].get("env", [])}
        assert env.get("MLFLOW_TRACKING_URI") == "http://mlflow.srlm.svc.cluster.local:5000", name


SECRET_VALUE = re.compile(
    r"AKIA[0-9A-Z]{16}|-----BEGIN [A-Z ]*PRIVATE KEY|gh[pousr]_[A-Za-z0-9]{20,}|hf_[A-Za-z0-9]{20,}|"
    r"xox[baprs]-|://[^/\s:@'\"]+:[^/\s@'\"]+@"
)
SECRET_NAME = re.compile(r"SECRET|PASSWORD|TOKEN|ACCESS_KEY|API_KEY|CREDENTIAL", re.IGNORECASE)


def test_no_secret_values_anywhere_in_the_yaml(cluster, tiny):
    for path in pc.OUTPUTS.values():
        text = (COMPILED / path).read_text()
        assert not SECRET_VALUE.search(text), path
    for spec, _ in (cluster, tiny):
        for ex in spec["deploymentSpec"]["executors"].values():
            for env in ex.get("container", {}).get("env", []):
                assert not SECRET_NAME.search(env["name"]), f"{env['name']} carries a value: use a Kubernetes secret"


def test_secrets_are_referenced_never_inlined(tmp_path, cluster):
    """Every cluster task logs to the authenticating MLflow server as the user of the srlm-mlflow-client Secret; a
    token for the hub comes from another Secret. Only references are in the YAML."""
    executors = cluster[1]["platforms"]["kubernetes"]["deploymentSpec"]["executors"].values()
    client = {"secretName": "srlm-mlflow-client", "keyToEnv": [
        {"secretKey": "username", "envVar": "MLFLOW_TRACKING_USERNAME"},
        {"secretKey": "password", "envVar": "MLFLOW_TRACKING_PASSWORD"}]}
    assert executors and all([{k: r[k] for k in client} for r in ex["secretAsEnv"]] == [client] for ex in executors)
    out = pc.compile_pipeline(
        pc.settings_for("cluster", {"secret_env": {"secret": "srlm-pipeline-env", "keys": {"HF_TOKEN": "HF_TOKEN"}}}),
        tmp_path / "with-secret.yaml")
    _, platform = load(out)
    refs = [ex.get("secretAsEnv") for ex in platform["platforms"]["kubernetes"]["deploymentSpec"]["executors"].values()]
    assert refs and all([r["secretName"] for r in task_refs] == ["srlm-mlflow-client", "srlm-pipeline-env"] for task_refs in refs)
    with pytest.raises(ValueError, match="Kubernetes secret"):
        pc.settings_for("cluster", {"env": {"AWS_SECRET_ACCESS_KEY": "x"}})


# --------------------------------------------------------------------------- local end-to-end


def run_tiny(run_dir, *args, env=None):
    """``make demo``'s command (pipelines.run_local) with ``args``; its summary."""
    result = subprocess.run([sys.executable, "-m", "pipelines.run_local", "--run-dir", str(run_dir), *args], cwd=ROOT,
                            capture_output=True, text=True, timeout=1500, env=env)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "say nothing about quality" in result.stdout
    summary = json.loads((run_dir / "summary.json").read_text())
    print(json.dumps({k: summary[k] for k in ("pipeline_seconds", "stages", "task_overhead_seconds_mean")}, indent=1))
    return summary


def check_three_registered_models(summary):
    """M1..M3 evaluated, registered with lineage and aliases, champion on M3; every stage logged to MLflow.
    Returns what MLflow holds (MLFLOW_CHECK)."""
    models = summary["models"]
    assert [m["model"] for m in models] == ["M1", "M2", "M3"]
    assert [m["parent_version"] for m in models] == [None, models[0]["version"], models[1]["version"]]
    for t, m in enumerate(models, start=1):
        assert f"iter-{t}" in m["aliases"]
        assert 0.0 <= m["rm_pairwise_accuracy"] <= 1.0 and 0.0 <= m["adjusted_win_rate_vs_previous"] <= 1.0
    assert all(m["pairs"] and m["pairs"] > 0 for m in models[1:])
    assert summary["champion"] == summary["challenger"] == models[-1]["version"]  # fresh store: first challenger wins
    for name in ("M1", "M2", "M3", "promotion", "run report"):
        assert Path(summary["reports"][name]).is_file()
    assert Path(summary["reports"]["M3"]).read_text().startswith("# Evaluation of M3")
    page = Path(summary["reports"]["run report"]).read_text()
    assert "Models: M1, M2, M3." in page
    # the families whose numbers do not hang on the tiny judge writing a verdict or a rating are plotted
    for family in ("Head to head against the previous model", "Answer length (characters)", "Answer length (tokens)",
                   "Reward-model metrics (EFT eval split)", "IFEval"):
        assert f'<img class="plot" alt="{family}"' in page, family

    env = {**os.environ, "MLFLOW_TRACKING_URI": summary["mlflow"]["tracking_uri"]}
    check = subprocess.run([sys.executable, "-c", MLFLOW_CHECK, summary["mlflow"]["experiment"],
                            summary["mlflow"]["model_name"]], cwd=ROOT, capture_output=True, text=True, env=env)
    assert check.returncode == 0, check.stderr[-3000:]
    found = json.loads(check.stdout.strip().splitlines()[-1])
    for t in ("1", "2", "3"):
        assert {"evaluate", "register"} <= set(found["stages"][t]), t
        evaluated = found["metrics"][t]
        assert evaluated["pairwise_accuracy"] is not None and evaluated["mean_tokens"] > 0
        # every benchmark on its bundled set; the judge's drift from the second model on (4 prompts judged again)
        assert (evaluated["alpaca_eval.instructions"], evaluated["mt_bench.judgements"]) == (8, 12), t
        assert 0 <= evaluated["ifeval_prompt_strict"] <= 1
        assert evaluated["judge_agreement.rejudged_prompts"] == (None if t == "1" else 4), t
    assert {"prompts", "sample", "judge", "pairs", "dpo"} <= set(found["stages"]["2"]) & set(found["stages"]["3"])
    assert found["parent_status"] == "FINISHED"
    assert len(found["versions"]) == 3
    for version in found["versions"]:
        assert version["tags"]["lineage.iteration"] == version["tags"]["iteration"]
        assert {"metric.ifeval_prompt_strict", "metric.alpaca_eval_judge_failure_rate",
                "metric.mt_bench_parse_failure_rate"} <= set(version["tags"])  # the rule can use them
        assert any(k.startswith("data_digest.") for k in version["tags"])
    return found


def model_volumes(spec):
    """{(dag, task): the model_volume value it gets} for every container task that has the input (a sub-DAG's
    component input resolved to what the root passes it)."""
    passed = {t["componentRef"]["name"]: t["inputs"]["parameters"] for t in tasks_of(spec).values()}
    values = {}
    for dag, name, task in container_tasks(spec):
        param = task.get("inputs", {}).get("parameters", {}).get("model_volume")
        if param is None:
            continue
        if "componentInputParameter" in param:
            param = passed[dag][param["componentInputParameter"]]
        values[(dag, name)] = param["runtimeValue"]["constant"]
    return values


def test_models_are_stored_where_the_model_storage_setting_says(tmp_path, tiny):
    """artifacts (the committed YAMLs): no volume, the cache on. workspace: KFP's per-run RWX workspace, every task
    that reads or writes a model gets its path (so KFP mounts it there), the base model is downloaded into it once, and
    the tasks that make a model are not cached (their artifact only refers to this run's volume). pvc: models_pvc
    mounted at /models on exactly those tasks."""
    uses = {name for name, stage in TASKS.items() if stage.uses_models}
    spec, platform = tiny
    assert "pipelineConfig" not in platform.get("platforms", {}).get("kubernetes", {})
    assert set(model_volumes(spec).values()) == {""}

    settings = pc.settings_for("cluster", {"model_storage": "workspace", "workspace_size": "2Ti",
                                           "workspace_storage_class": "nfs-rwx"})
    spec, platform = load(pc.compile_pipeline(settings, tmp_path / "workspace.yaml"))
    assert platform["platforms"]["kubernetes"]["pipelineConfig"]["workspace"] == {
        "size": "2Ti", "kubernetes": {"pvcSpecPatch": {"accessModes": ["ReadWriteMany"], "storageClassName": "nfs-rwx"}}}
    volumes = model_volumes(spec)
    present = {stage_of(task) for _, _, task in container_tasks(spec)}  # the cluster imports M0: no tiny_model
    assert {stage_of(task) for dag, name, task in container_tasks(spec) if (dag, name) in volumes} == uses & present
    assert set(volumes.values()) == {"{{$.workspace_path}}"}
    importer = spec["deploymentSpec"]["executors"]["exec-importer"]["importer"]
    assert importer["downloadToWorkspace"] is True
    for dag, name, task in container_tasks(spec):
        cached = task.get("cachingOptions", {}).get("enableCache", False)
        assert cached == (TASKS[stage_of(task)].cached and not TASKS[stage_of(task)].writes_model), (dag, name)

    settings = pc.settings_for("cluster", {"model_storage": "pvc", "models_pvc": "srlm-models"})
    spec, platform = load(pc.compile_pipeline(settings, tmp_path / "pvc.yaml"))
    k8s = platform["platforms"]["kubernetes"]["deploymentSpec"]["executors"]
    assert set(model_volumes(spec).values()) == {"/models"}
    for dag, name, task in container_tasks(spec):
        label, _ = executor(spec, task)
        mounts = {m["mountPath"]: m.get("constant", m.get("pvcNameParameter")) for m in k8s.get(label, {}).get("pvcMount", [])}
        assert ("/models" in mounts) == (stage_of(task) in uses), (dag, name)
    with pytest.raises(ValueError, match="model_storage pvc needs models_pvc"):
        pc.settings_for("cluster", {"model_storage": "pvc"})
    with pytest.raises(ValueError, match="model_storage must be one of"):
        pc.settings_for("cluster", {"model_storage": "s3"})


@pytest.mark.slow
def test_local_end_to_end_run_of_the_compiled_tiny_pipeline(tmp_path):
    """`make demo`'s run: the committed tiny YAML through kfp.local, MLflow in a SQLite store."""
    found = check_three_registered_models(run_tiny(tmp_path / "demo"))
    for version in found["versions"]:
        assert Path(version["source"]).is_dir()  # registered by reference to the KFP artifact


@pytest.mark.slow
def test_local_run_with_models_on_the_workspace_sft_on_a_trainjob_and_dpo_on_two_processes(tmp_path, monkeypatch):
    """The big-model modes together on the tiny pipeline through kfp.local: models written once on the pipeline
    workspace (kfp.local's workspace_root; a per-run RWX PVC on a cluster) and read in place; the seed SFT as a
    TrainJob of 2 nodes (the Kubernetes API stand-in, whose controller runs the job's torchrun per node); every DPO
    round as torchrun with 2 processes in its task (gpus_per_node 2; gloo on CPU). M1..M3 are registered as with
    the default, but copied to MLflow's artifact store: kfp.local deletes the workspace when the run ends."""
    from k8s_standin import StandIn, one, rendered_trainer_manifests

    settings = pc.settings_for("tiny", {"model_storage": "workspace", "workspace_size": "10Gi"})
    yaml_path = pc.compile_pipeline(settings, tmp_path / "workspace.yaml")
    shared = tmp_path / "models"  # what every TrainJob node sees (the RWX volume's stand-in)
    training = {"sft": {"launcher": "trainjob", "nodes": 2, "shared_dir": str(shared), "trainjob_namespace": "kubeflow"},
                "dpo": {"gpus_per_node": 2}}
    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # the TrainJob's 2 node processes share this machine's 2 cores
    with StandIn("2.3.0", tmp_path / "pods") as api:
        api.cluster.create("trainingruntimes", "kubeflow", one(rendered_trainer_manifests(), "TrainingRuntime"),
                           strict=True)
        env = {**os.environ, "KUBECONFIG": str(api.kubeconfig(tmp_path / "kubeconfig", "kubeflow"))}
        env.pop("KUBERNETES_SERVICE_HOST", None)
        run_dir = tmp_path / "run"
        summary = run_tiny(run_dir, "--yaml", str(yaml_path), "--set", f"training={json.dumps(training)}", env=env)
        created = list(api.cluster.created)
    found = check_three_registered_models(summary)
    assert len(created) == 1 and created[0].startswith("srlm-sft-")  # the seed SFT, and nothing else, on a TrainJob
    assert not (run_dir / "workspace").exists() and list(shared.iterdir()) == []  # nothing left on the volumes

    import mlflow.artifacts

    from srlm.modeldir import check_model_dir, read_lineage

    processes = {}
    with monkeypatch.context() as mp:
        mp.setenv("MLFLOW_TRACKING_URI", summary["mlflow"]["tracking_uri"])
        for version in found["versions"]:
            assert version["source"].startswith("runs:/") and version["source"].endswith("/model"), version["source"]
            model = Path(mlflow.artifacts.download_artifacts(artifact_uri=version["source"],
                                                            dst_path=str(tmp_path / "registered" / str(version["version"]))))
            check_model_dir(model)
            lineage = read_lineage(model)
            processes[version["tags"]["iteration"]] = (lineage["stage"], lineage["metrics"]["processes"])
    assert processes == {"1": ("sft", 2), "2": ("dpo", 2), "3": ("dpo", 2)}


MLFLOW_CHECK = """
import json, sys
from mlflow.tracking import MlflowClient
client = MlflowClient()
experiment = client.get_experiment_by_name(sys.argv[1])
runs = client.search_runs([experiment.experiment_id])
stages, metrics, parent = {}, {}, None
for r in runs:
    t = r.data.tags
    if t.get("srlm.kind") == "pipeline":
        parent = r.info.status
    elif "iteration" in t:
        stages.setdefault(t["iteration"], []).append(t["stage"])
        if t["stage"] == "evaluate":
            metrics[t["iteration"]] = {k: r.data.metrics.get(k) for k in (
                "pairwise_accuracy", "ifeval_prompt_strict", "alpaca_eval.instructions", "mt_bench.judgements",
                "judge_agreement.rejudged_prompts", "mean_tokens")}
versions = [{"version": v.version, "source": v.source, "tags": dict(v.tags)}
            for v in client.search_model_versions(f"name = '{sys.argv[2]}'")]
print(json.dumps({"stages": stages, "metrics": metrics, "parent_status": parent, "versions": versions}))
"""


def test_cluster_tasks_request_resources_and_gpu_tasks_get_memory_floor_cache_and_scratch(cluster, tiny):
    """An 8B task must not land on a 24 GB card, nor share a node's memory blindly: every task asks for CPU and
    memory by its kind; GPU tasks need GPUs above a memory floor and mount the model cache and a scratch volume."""
    spec, platform = cluster
    k8s = platform["platforms"]["kubernetes"]["deploymentSpec"]["executors"]
    settings = pc.settings_for("cluster")
    for _, name, task in container_tasks(spec):
        kind = TASKS[stage_of(task)].resources
        label, ex = executor(spec, task)
        resources = ex["container"]["resources"]
        assert resources["resourceCpuRequest"] == settings.requests[kind]["cpu"], name
        assert resources["resourceMemoryRequest"] == settings.requests[kind]["memory"], name
        if kind == "cpu":
            assert not {"nodeAffinity", "pvcMount", "genericEphemeralVolume"} & set(k8s.get(label, {})), name
            continue
        floor = k8s[label]["nodeAffinity"][0]["matchExpressions"][0]
        assert floor == {"key": "nvidia.com/gpu.memory", "operator": "Gt",
                         "values": [str(settings.min_gpu_memory_mib[kind])]}, name
        assert k8s[label]["pvcMount"][0]["mountPath"] == "/cache", name
        env = {e["name"]: e.get("value") for e in ex["container"].get("env", [])}
        assert env["SRLM_PROGRESS_VOLUME"] == "/cache", name  # saved progress outlives the pod: a retry resumes
        assert k8s[label]["genericEphemeralVolume"][0]["mountPath"] == "/scratch", name
        assert {"name": "TMPDIR", "value": "/scratch"} in ex["container"]["env"], name
    assert settings.min_gpu_memory_mib["training"] > settings.min_gpu_memory_mib["generation"] >= 40000
    tiny_spec, tiny_platform = tiny
    for _, name, task in container_tasks(tiny_spec):  # the tiny pipeline runs anywhere
        assert "resourceCpuRequest" not in executor(tiny_spec, task)[1]["container"].get("resources", {}), name


def test_several_gpus_per_task_get_shared_memory(tmp_path, cluster):
    """gpus.training = 8 (torchrun runs 8 processes: training.gpus_per_node 0 = every GPU the task has) and
    gpus.generation = 4 (vLLM tensor_parallel_size 4): those tasks ask for that many GPUs and get a /dev/shm
    Memory volume; one-GPU tasks (the committed cluster YAML) do not."""
    spec, platform = cluster
    assert not any("emptyDirMounts" in e for e in platform["platforms"]["kubernetes"]["deploymentSpec"]["executors"].values())
    gpus = {"training": 8, "generation": 4, "evaluation": 1}
    out = pc.compile_pipeline(pc.settings_for("cluster", {"gpus": gpus}), tmp_path / "gpus.yaml")
    spec, platform = load(out)
    k8s = platform["platforms"]["kubernetes"]["deploymentSpec"]["executors"]
    seen = set()
    for _, name, task in container_tasks(spec):
        kind = TASKS[stage_of(task)].resources
        if kind == "cpu":
            continue
        label, ex = executor(spec, task)
        assert int(ex["container"]["resources"]["accelerator"]["resourceCount"]) == gpus[kind], name
        shm = k8s[label].get("emptyDirMounts", [])
        assert shm == ([{"volumeName": "dshm", "mountPath": "/dev/shm", "medium": "Memory", "sizeLimit": "16Gi"}]
                       if gpus[kind] > 1 else []), name
        seen.add(kind)
    assert seen == set(gpus)


def test_training_tasks_mount_the_shared_models_volume_for_trainjobs(tmp_path):
    """models_pvc: the training tasks (TrainJob launchers in trainjob mode) see the RWX volume the nodes share at
    /models (training.shared_dir), and every task knows its own image (SRLM_IMAGE: the nodes run the same one)."""
    settings = pc.settings_for("cluster", {"models_pvc": "srlm-models", "gpus": {"training": 0}})
    spec, platform = load(pc.compile_pipeline(settings, tmp_path / "trainjob.yaml"))
    k8s = platform["platforms"]["kubernetes"]["deploymentSpec"]["executors"]
    from components.images import image

    for _, name, task in container_tasks(spec):
        stage = stage_of(task)
        label, ex = executor(spec, task)
        mounts = [m["mountPath"] for m in k8s.get(label, {}).get("pvcMount", [])]
        assert ("/models" in mounts) == (TASKS[stage].resources == "training"), name
        assert {"name": "SRLM_IMAGE", "value": image(stage)} in ex["container"]["env"], name
        if TASKS[stage].resources == "training":
            assert "accelerator" not in ex["container"].get("resources", {}), name  # the nodes hold the GPUs


FAILED_RUN_CHECK = """
import json, sys
from mlflow.tracking import MlflowClient
client = MlflowClient()
experiment = client.get_experiment_by_name(sys.argv[1])
parent = client.search_runs([experiment.experiment_id], "tags.`srlm.kind` = 'pipeline'")[0]
versions = [{"version": str(v.version), "tags": dict(v.tags)} for v in client.search_model_versions(f"name = '{sys.argv[2]}'")]
aliases = dict(client.get_registered_model(sys.argv[2]).aliases)
print(json.dumps({"status": parent.info.status, "tags": parent.data.tags, "versions": versions,
                  "aliases": {k: str(v) for k, v in aliases.items()}}))
"""


@pytest.mark.slow
def test_a_run_that_fails_in_iteration_2_is_closed_and_its_model_never_promoted(tmp_path):
    """The exit handler through kfp.local: a seed SFT of 10 steps makes an M1 that never writes a judge score, so the
    self-judging of iteration 2 fails, after M1 was registered. The MLflow parent run ends FAILED naming the stage and
    its error, M1's version is tagged as from a failed run, no champion is set, `srlm promote` refuses it, and the
    task's log has the one-line error, no traceback."""
    run_dir = tmp_path / "failed"
    result = subprocess.run(
        [sys.executable, "-m", "pipelines.run_local", "--run-dir", str(run_dir),
         "--set", 'training={"sft": {"max_steps": 10}}',
         "--set", 'evaluation={"benchmarks": [], "rm": {"max_items": 2}, "winrate": {"max_prompts": 2}}'],
        cwd=ROOT, capture_output=True, text=True, timeout=1500)
    assert result.returncode == 1 and "The pipeline failed" in result.stderr, result.stdout[-2000:] + result.stderr[-3000:]
    log = (run_dir / "pipeline.log").read_text()
    assert "srlm judge: " in log and "the judge produced no valid score" in log and "Traceback" not in log
    env = {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{run_dir / 'mlflow.db'}"}
    check = subprocess.run([sys.executable, "-c", FAILED_RUN_CHECK, "srlm-demo", "srlm-tiny"], cwd=ROOT,
                           capture_output=True, text=True, env=env)
    assert check.returncode == 0, check.stderr[-3000:]
    found = json.loads(check.stdout.strip().splitlines()[-1])
    assert found["status"] == "FAILED" and found["tags"]["srlm.failed_stage"] == "judge (iteration 2)"
    assert "no valid score" in found["tags"]["srlm.error"] and found["tags"]["srlm.final_state"] == "FAILED"
    assert [v["tags"]["iteration"] for v in found["versions"]] == ["1"]
    assert found["versions"][0]["tags"]["srlm.run_status"] == "FAILED"
    assert "champion" not in found["aliases"] and found["aliases"]["iter-1"] == found["versions"][0]["version"]
    refused = subprocess.run([sys.executable, "-m", "srlm.cli", "promote", "--name", "srlm-tiny"], cwd=ROOT,
                             capture_output=True, text=True, env=env)
    assert refused.returncode == 2 and "1 from failed runs" in refused.stderr, refused.stderr[-2000:]
