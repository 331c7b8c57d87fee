"""Presets are settings files shipped with the package; every one, and every example in the README, loads."""

import json
import re
from pathlib import Path

import pytest
import yaml

from srlm import SrlmError, presets, stages
from srlm.cli import main

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("name", presets.names())
def test_every_shipped_preset_loads_every_config_of_every_group(name):
    groups = presets.load(name)
    assert set(groups) <= set(stages.GROUPS)
    for group, keys in stages.GROUPS.items():
        for key, cls in keys.items():
            config = cls.load(name)
            for setting, value in (groups.get(group, {}).get(key) or {}).items():
                assert getattr(config, setting) == value or isinstance(value, list), (name, group, key, setting)


def test_paper_preset_is_every_default_and_current():
    assert (presets.directory() / "paper.yaml").read_text(encoding="utf-8") == presets.paper_text(), \
        "src/srlm/presets/paper.yaml is stale: run `python -m srlm.presets write-paper`"
    paper = presets.load("paper")
    for group, keys in stages.GROUPS.items():
        for key, cls in keys.items():
            assert paper[group][key] == cls().to_dict(), (group, key)
    assert presets.names()[0] == "paper" and {"tiny", "testbed"} <= set(presets.names())


def test_testbed_preset_starts_from_tiny():
    tiny, testbed = presets.load("tiny"), presets.load("testbed")
    assert testbed["training"]["sft"]["max_steps"] == 3000 and testbed["training"]["sft"]["learning_rate"] == 2e-3
    assert testbed["evaluation"]["winrate"]["method"] == tiny["evaluation"]["winrate"]["method"] == "rubric"


def test_unknown_preset_names_the_ones_there_are():
    with pytest.raises(SrlmError, match="unknown preset 'huge'; choose from paper, test"):
        stages.group_config("sampling", {"preset": "huge"}, "candidates")


def test_a_copied_and_edited_preset_runs_a_stage_through_config(tmp_path, capsys):
    """Copy tiny.yaml, edit it, pass it with --config: the stage reads its own section, base presets included."""
    mine = tmp_path / "mine.yaml"
    mine.write_text(yaml.safe_dump({"base": "tiny", "judging": {"pairs": {"min_margin": 2.5}}}))
    judgements = tmp_path / "j.jsonl"
    rows = [{"id": "a", "prompt": "q", "replies": [
        {"text": t, "judge_outputs": [f"Score: {s}"], "scores": [s], "mean": s} for t, s in (("good", 5.0), ("ok", 3.0))]}]
    judgements.write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert main(["pairs", "--config", str(mine), "--judgements", str(judgements), "--out", str(tmp_path / "p.jsonl")]) == 2
    assert "0 preference pairs" in capsys.readouterr().err  # the 2-point margin is within 2.5: no pair
    config = stages.STAGES["sft"].config_class.load(yaml_path=mine)
    assert config.max_steps == 600  # SFT's section of the base preset, tiny


def test_settings_files_are_checked(tmp_path):
    flat = tmp_path / "flat.yaml"
    flat.write_text("n: 4\n")
    with pytest.raises(SrlmError, match="not a settings file: its top-level keys must be settings groups"):
        presets.settings_file(flat)
    looped = tmp_path / "loop.yaml"
    looped.write_text("base: loop.yaml\nsampling: {}\n")
    with pytest.raises(SrlmError, match="presets form a loop"):
        presets.settings_file(looped)


def readme_yaml_blocks() -> list[str]:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    return re.findall(r"```yaml\n(.*?)```", text, flags=re.S)


def test_readme_example_settings_load(tmp_path):
    blocks = readme_yaml_blocks()
    assert blocks, "the README shows a settings file example"
    for i, block in enumerate(blocks):
        path = tmp_path / f"example{i}.yaml"
        path.write_text(block, encoding="utf-8")
        groups = presets.settings_file(path)
        for group, keys in stages.GROUPS.items():
            if group in groups:
                for key in keys:
                    stages.group_config(group, groups[group], key)
