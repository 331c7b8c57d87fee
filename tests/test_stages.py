"""The stage registry is the one home of a stage: the CLI, components, pipeline settings and images derive from it."""

import inspect
import json
import sys
from pathlib import Path

import pytest

from srlm import SrlmError, stages
from srlm.context import RunContext

ROOT = Path(__file__).resolve().parents[1]


def test_images_json_lists_exactly_the_registrys_pipeline_stages():
    spec = json.loads((ROOT / "images" / "images.json").read_text(encoding="utf-8"))
    derived = stages.image_names()
    assert {k: v for k, v in spec["images"].items() if k != "base"} == derived["images"], \
        "images/images.json is stale: run `python -m srlm.stages images images/images.json`"
    assert spec["stages"] == derived["stages"]
    for name, stage in stages.TASKS.items():
        assert stage.family in stages.FAMILIES and stage.resources in stages.RESOURCES, name
        assert (ROOT / "images" / name / "Dockerfile").is_file(), name


def test_every_stage_is_one_name_with_a_step_and_known_settings():
    for name, stage in stages.STAGES.items():
        assert stage.name == name and name.isidentifier()
        params = list(inspect.signature(stage.step).parameters.values())
        assert params[0].name == "ctx" and all(p.kind is p.KEYWORD_ONLY for p in params[1:]), name  # one convention
        assert {p.name for p in stage.params} <= {p.name for p in params}, name
        for keyword, (key, cls) in stage.configs.items():
            assert stages.GROUPS[stage.group][key] is cls, (name, keyword)
        assert set(stage.outputs) <= {p.name for p in stage.params} or stage.cli is False, name
    assert list(stages.GROUPS) == list(stages.GROUP_ORDER)


def test_configure_builds_every_config_of_a_stage_from_its_group():
    seed = stages.STAGES["seed"].configure({"preset": "tiny", "seed": {"source": "testbed"}, "files": {"ift": "x"}})
    assert seed["config"].source == "testbed" and seed["testbed"].seed == 0 and seed["files"] == {"ift": "x"}
    with pytest.raises(SrlmError, match=r"data: unknown key\(s\) \['prompts'\]"):
        stages.STAGES["seed"].configure({"prompts": "p.jsonl"})  # evaluation has prompts; data does not
    with pytest.raises(SrlmError, match="unknown settings group 'sampler'"):
        stages.check_group("sampler", {})


def test_the_adapter_refuses_an_existing_output_before_the_step_runs(tmp_path):
    out = tmp_path / "m0"
    out.mkdir()
    (out / "mine.txt").write_text("keep")
    with pytest.raises(SrlmError, match="already exists"):
        stages.run_stage("tiny_model", {"preset": "tiny"}, out=str(out))
    assert [p.name for p in out.iterdir()] == ["mine.txt"]
    stats = stages.run_stage("tiny_model", {"preset": "tiny", "tiny": {"vocab_size": 300}}, out=str(out), overwrite=True)
    assert stats["vocab_size"] >= 300 and (out / "config.json").is_file() and not (out / "mine.txt").exists()


def test_the_context_needs_a_run_id_to_track(monkeypatch):
    monkeypatch.setenv("KFP_RUN_ID", "from-the-pod")  # a cluster task reads its run id from its pod's label
    assert RunContext.of({"experiment": "e", "model_name": "m"}, "").kfp_run_id == "from-the-pod"
    assert RunContext.of({"experiment": "e", "model_name": "m"}, "given").kfp_run_id == "given"
    monkeypatch.delenv("KFP_RUN_ID")
    assert RunContext().tracking is False
    assert RunContext.of({"enabled": False}).tracking is False
    with pytest.raises(SrlmError, match="KFP run id is empty"):
        assert RunContext.of({"experiment": "e", "model_name": "m"}).tracking
    with pytest.raises(SrlmError, match=r"mlflow: unknown key\(s\) \['kfp_run_id'\]"):
        RunContext.of({"kfp_run_id": "x"})
    assert RunContext.of({}, "run-1", 2).at(3).iteration == 3


def test_a_new_stage_is_one_entry(monkeypatch):
    """A stage added to the registry is a CLI command with its config's flags, with no other file touched."""
    from srlm import cli
    from srlm.pairs import PairsConfig

    def shout(ctx, *, config, judgements, out):
        Path(out).write_text(Path(judgements).read_text().upper())
        return {"min_margin": config.min_margin}

    extra = stages.Stage("shout", "upper-case a file", shout, "judging", {"config": ("pairs", PairsConfig)},
                         params=(stages.Param("judgements", "a file"), stages.Param("out", "where")))
    monkeypatch.setitem(stages.STAGES, "shout", extra)
    parser = cli.build_parser()
    args = parser.parse_args(["shout", "--judgements", "a", "--out", "b", "--min-margin", "0.5"])
    assert args.stage is extra and args.min_margin == "0.5"
    assert sys.modules["srlm.stages"].STAGES["shout"].command == "shout"
