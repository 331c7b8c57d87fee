"""Fan-out: sampling and judging split into K shards and merged back, byte for byte the K = 1 output."""

import random

import pytest

from srlm import SrlmError, judge, sampling, stages
from srlm.context import RunContext
from srlm.io import read_jsonl, write_jsonl
from srlm.shards import gather, read_shard, write_shard

PROMPTS = [f"Tell me {'a lot more ' * (i % 4)}about topic number {i}." for i in range(10)]
# Small batches so that each run has several global batches to spread over the shards.
SAMPLING = {"preset": "tiny", "threads": 1, "candidates": {"n": 2, "max_new_tokens": 16, "batch_size": 8}}
JUDGING = {"preset": "tiny", "threads": 1, "judge": {"samples": 2, "batch_size": 8}}


def prompts_file(path, prompts=PROMPTS):
    write_jsonl(path, [{"id": f"p{i}", "prompt": p} for i, p in enumerate(prompts)], "prompt")
    return path


AT_2 = RunContext(iteration=2)


def sample(model, prompts, out, **shard):
    return stages.run_stage("sample", SAMPLING, AT_2, model=str(model), prompts=str(prompts), out=str(out), **shard)


def judge_step(model, candidates, out, **shard):
    return stages.run_stage("judge", JUDGING, AT_2, model=str(model), candidates=str(candidates), out=str(out), **shard)


def merge(stage, paths, out):
    return stages.run_stage("merge", None, AT_2, stage=stage, shard_files=[str(p) for p in paths], out=str(out))


def shard_paths(tmp_path, name, shards):
    return [tmp_path / f"{name}-{k}-of-{shards}.jsonl" for k in range(shards)]


# --------------------------------------------------------------------------- the real generator


@pytest.mark.slow
def test_sharded_sampling_and_judging_merge_to_the_unsharded_files(tmp_path, sft_model):
    """The sample and judge stages with K = 3 shards (then K = 2) + the merge stage == K = 1, byte for byte."""
    prompts = prompts_file(tmp_path / "prompts.jsonl")
    candidates, judgements = tmp_path / "candidates.jsonl", tmp_path / "judgements.jsonl"
    plain_sample = sample(sft_model, prompts, candidates)
    plain_judge = judge_step(sft_model, candidates, judgements)
    assert plain_judge["replies"] == 20 and plain_judge["unscored_replies"] < 20

    for shards in (3, 2):
        parts = shard_paths(tmp_path, "candidates", shards)
        shard_stats = [sample(sft_model, prompts, p, shard=k, shards=shards)
                       for k, p in enumerate(parts)]
        assert sum(s["prompts"] for s in shard_stats) == 10 and all(s["shards"] == shards for s in shard_stats)
        merged = tmp_path / f"candidates-merged-{shards}.jsonl"
        merged_stats = merge("sample", reversed(parts), merged)  # any order
        assert merged.read_bytes() == candidates.read_bytes()
        assert {k: v for k, v in merged_stats.items() if k not in ("shards", "wall_seconds")} == {
            k: v for k, v in plain_sample.items() if k != "wall_seconds"}

        jparts = shard_paths(tmp_path, "judgements", shards)
        judged = [judge_step(sft_model, merged, p, shard=k, shards=shards)
                  for k, p in enumerate(jparts)]
        assert sum(s["replies"] for s in judged) == 20
        jmerged = tmp_path / f"judgements-merged-{shards}.jsonl"
        jstats = merge("judge", jparts, jmerged)
        assert jmerged.read_bytes() == judgements.read_bytes()
        assert {k: v for k, v in jstats.items() if k not in ("shards", "wall_seconds")} == {
            k: v for k, v in plain_judge.items() if k != "wall_seconds"}
    # with 3 shards at least one judged record was split across shards: merging regrouped its replies
    heads = [read_shard(p, "judgements") for p in shard_paths(tmp_path, "judgements", 3)]
    owners = {}
    for _, records in heads:
        for _, item in records:
            owners.setdefault(item["record"], set()).add(id(records))
    assert any(len(o) > 1 for o in owners.values())


def test_sampling_shard_writes_only_its_prompts_with_their_positions(tmp_path, tiny_model):
    prompts = prompts_file(tmp_path / "prompts.jsonl")
    config = sampling.SamplingConfig.load("tiny", n=2, max_new_tokens=4, batch_size=8, threads=1)
    stats = sampling.run(config, tiny_model, prompts, tmp_path / "s1.jsonl", shard=(1, 2))
    head, records = read_shard(tmp_path / "s1.jsonl", "candidates")
    assert (head.shard, head.shards, head.items) == (1, 2, 10)
    # batches of 4 length-sorted prompts: 3 batches, shard 1 holds the middle one
    assert stats["prompts"] == len(records) == 4 and stats["shard"] == 1
    assert all(r["id"] == f"p{r['index']}" and len(r["replies"]) == 2 for _, r in records)
    with pytest.raises(SrlmError, match=r"not a shard file"):
        read_shard(prompts, "candidates")


# --------------------------------------------------------------------------- the random scorer (no model)


def test_random_scorer_shards_merge_to_the_unsharded_file(tmp_path):
    candidates = tmp_path / "candidates.jsonl"
    rows = [{"id": f"p{i}", "prompt": f"Prompt {i}.", "replies": [f"r{i}.{j}" for j in range(1 + i % 3)]}
            for i in range(9)]
    write_jsonl(candidates, rows, "candidates")
    config = judge.JudgeConfig.load("tiny", scorer="random", seed=4)
    plain = judge.run(config, tmp_path / "no-model", candidates, tmp_path / "plain.jsonl")
    for shards in (2, 5, 25):  # 25 > 18 replies: some shards are empty
        parts = shard_paths(tmp_path, "j", shards)
        for k, part in enumerate(parts):
            judge.run(config, tmp_path / "no-model", candidates, part, shard=(k, shards))
        out = tmp_path / f"merged-{shards}.jsonl"
        stats = judge.merge_shards(random.Random(shards).sample(parts, shards), out)
        assert out.read_bytes() == (tmp_path / "plain.jsonl").read_bytes(), shards
        assert stats == {**plain, "shards": shards}


# --------------------------------------------------------------------------- merge checks


def candidates_shards(tmp_path, shards=3, items=7, drop=(), extra=()):
    """Hand-written candidates shard files: item i in shard i % shards."""
    paths = []
    for k in range(shards):
        records = [(i, {"id": f"p{i}", "prompt": f"q{i}", "replies": [f"a{i}"]})
                   for i in list(range(items)) + list(extra) if i % shards == k and i not in drop]
        path = tmp_path / f"c{k}.jsonl"
        write_shard(path, "candidates", (k, shards), items, records)
        paths.append(path)
    return paths


def test_gather_restores_order_from_any_shard_order(tmp_path):
    paths = candidates_shards(tmp_path, shards=3, items=7)
    rows, total, _ = gather([paths[2], paths[0], paths[1]], "candidates")
    assert total == 3 and [r["id"] for r in rows] == [f"p{i}" for i in range(7)]
    assert all("index" not in r for r in rows)


def test_an_empty_shard_is_a_shard(tmp_path):
    paths = candidates_shards(tmp_path, shards=9, items=4)  # shards 4..8 hold nothing
    out = tmp_path / "merged.jsonl"
    stats = sampling.merge_shards(paths, out)
    assert stats["prompts"] == 4 and stats["shards"] == 9
    assert [r["id"] for r in read_jsonl(out, "candidates")] == ["p0", "p1", "p2", "p3"]


@pytest.mark.parametrize("case, message", [
    ("missing shard", r"2 candidates shard file\(s\) for 3 shards: shard\(s\) \[1\] missing"),
    ("shard twice", r"c0\.jsonl: shard 0 of 3 again \(also .*c0\.jsonl\)"),
    ("item twice", r"c0\.jsonl:\d+: item 3 is also in .*c0\.jsonl:\d+"),
    ("item missing", r"1 of 7 candidates items are in no shard file \(items 4\); shard files: .*c0\.jsonl"),
    ("other run", r"c1\.jsonl: shard 1 of 3 over 8 items, but .*c0\.jsonl is shard 0 of 3 over 7 items"),
    ("plain file", r"plain\.jsonl:1: not a shard file"),
    ("other kind", r"c0\.jsonl:1: a shard of 'candidates' records, expected 'judgements'"),
    ("no files", r"no candidates shard files to merge"),
])
def test_merge_refuses_an_incomplete_or_mixed_set_of_shards(tmp_path, case, message):
    kind = "candidates"
    paths = candidates_shards(tmp_path)
    if case == "missing shard":
        paths = [paths[0], paths[2]]
    elif case == "shard twice":
        paths = [paths[0], paths[1], paths[2], paths[0]]
    elif case == "item twice":
        paths = candidates_shards(tmp_path, extra=[3])
    elif case == "item missing":
        paths = candidates_shards(tmp_path, drop=[4])
    elif case == "other run":
        write_shard(paths[1], "candidates", (1, 3), 8, [])
    elif case == "plain file":
        plain = tmp_path / "plain.jsonl"
        write_jsonl(plain, [{"id": "p0", "prompt": "q", "replies": ["a"]}], "candidates")
        paths = [plain]
    elif case == "other kind":
        kind = "judgements"
    elif case == "no files":
        paths = []
    out = tmp_path / "merged.jsonl"
    merge = sampling.merge_shards if kind == "candidates" else judge.merge_shards
    with pytest.raises(SrlmError, match=message):
        merge(paths, out)
    assert not out.exists()


def test_judge_merge_checks_every_reply_for_a_score(tmp_path):
    """A shard with no valid score is fine; all shards without one stop the merge, as K = 1 would stop."""
    def reply(score):
        return {"text": "r", "judge_outputs": ["Score: 3" if score else "none"], "scores": [score], "mean": score}

    def shard_file(k, scores):
        path = tmp_path / f"j{k}.jsonl"
        write_shard(path, "judgements", (k, 2), 2,
                    [(k, {"record": 0, "id": "p0", "prompt": "q", "reply": reply(scores)})])
        return path

    stats = judge.merge_shards([shard_file(0, None), shard_file(1, 3.0)], tmp_path / "ok.jsonl")
    assert (stats["replies"], stats["unscored_replies"], stats["parse_failures"]) == (2, 1, 1)
    assert [len(r["replies"]) for r in read_jsonl(tmp_path / "ok.jsonl", "judgements")] == [2]
    with pytest.raises(SrlmError, match="no valid score in 2 judgements of 2 replies"):
        judge.merge_shards([shard_file(0, None), shard_file(1, None)], tmp_path / "none.jsonl")
    assert not (tmp_path / "none.jsonl").exists()


def test_stages_reject_bad_shard_settings(tmp_path):
    with pytest.raises(SrlmError, match="out of range"):
        stages.run_stage("sample", {"preset": "tiny"}, model="m", prompts="p", out=str(tmp_path / "o"), shard=2, shards=2)
    with pytest.raises(SrlmError, match="unknown stage 'pairs'"):
        merge("pairs", [], tmp_path / "o")


# --------------------------------------------------------------------------- kfp.local: the fan-out as compiled


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore:You may be attemping to run a task", "ignore:.*have no effect in the current local")
def test_kfp_local_runs_the_compiled_fan_out(tmp_path, sft_model):
    """pipelines/iteration.py's fan-out (K = 2, inside a sub-pipeline as in the real DAG) compiled and run by
    kfp.local: ParallelFor shard tasks, dsl.Collected into the merge, files identical to the K = 1 stages."""
    import sys
    from pathlib import Path

    from kfp import compiler, dsl, local
    from kfp.components import load_component_from_file

    root = Path(__file__).resolve().parents[1]
    if str(root) not in sys.path:
        sys.path.insert(0, str(root))
    from pipelines.iteration import sample_and_judge
    from pipelines.settings import TINY

    settings = TINY.replace(shards=2)
    prompts = prompts_file(tmp_path / "prompts.jsonl", PROMPTS[:6])

    @dsl.pipeline(name="fan-out")
    def fan_out(model: dsl.Input[dsl.Model], prompts: dsl.Input[dsl.Dataset], sampling: dict, judging: dict,
                mlflow: dict) -> dsl.Dataset:
        run = {"mlflow": mlflow, "kfp_run_id": dsl.PIPELINE_JOB_ID_PLACEHOLDER, "iteration": 2}
        return sample_and_judge(settings, model, prompts, sampling, judging, run, {"model_volume": ""})

    @dsl.pipeline(name="fan-out-test")
    def outer(sampling: dict, judging: dict) -> dsl.Dataset:
        model = dsl.importer(artifact_uri=str(sft_model), artifact_class=dsl.Model, reimport=False)
        data = dsl.importer(artifact_uri=str(prompts), artifact_class=dsl.Dataset, reimport=False)
        inner = fan_out(model=model.output, prompts=data.output, sampling=sampling, judging=judging,
                        mlflow={"enabled": False})
        return inner.output

    compiled = tmp_path / "fan_out.yaml"
    compiler.Compiler().compile(outer, str(compiled))
    local.init(runner=local.SubprocessRunner(use_venv=False), pipeline_root=str(tmp_path / "kfp"),
               workspace_root=str(tmp_path / "workspace"))
    task = load_component_from_file(str(compiled))(sampling=SAMPLING, judging=JUDGING)
    merged_judgements = Path(task.output.path)
    merged_candidates = next(p for p in (tmp_path / "kfp").rglob("merged") if p.parent.name == "merge")
    shard_files = sorted(p for p in (tmp_path / "kfp").rglob("candidates") if "iteration-" in str(p))
    assert len(shard_files) == 2 and all(read_shard(p, "candidates")[0].shards == 2 for p in shard_files)

    candidates, judgements = tmp_path / "candidates.jsonl", tmp_path / "judgements.jsonl"
    sample(sft_model, prompts, candidates)
    judge_step(sft_model, candidates, judgements)
    assert merged_candidates.read_bytes() == candidates.read_bytes()
    assert merged_judgements.read_bytes() == judgements.read_bytes()
