import argparse

import pytest

from srlm import SrlmError, presets
from srlm.config import add_config_arguments, config_from_args
from srlm.judge import JudgeConfig
from srlm.prompts import PromptGenConfig
from srlm.sampling import SamplingConfig


def test_paper_defaults():
    sampling, judge, prompts = SamplingConfig(), JudgeConfig(), PromptGenConfig()
    assert (sampling.n, sampling.temperature, sampling.top_p) == (4, 0.7, 0.9)
    assert (judge.samples, judge.temperature, judge.top_p) == (3, 0.7, 0.9)
    assert (prompts.seed_shots, prompts.generated_shots, prompts.temperature, prompts.top_p) == (6, 2, 0.6, 0.9)
    assert prompts.rouge_threshold == 0.7


def test_precedence_preset_yaml_override(tmp_path):
    yaml_file = tmp_path / "c.yaml"
    yaml_file.write_text("max_new_tokens: 99\ntemperature: 0.5\n")
    config = SamplingConfig.load("tiny", yaml_file, temperature="0.3")
    assert config.max_new_tokens == 99  # yaml beats preset
    assert config.temperature == 0.3  # flag beats yaml, coerced from str
    assert config.n == 4 and config.top_p == 0.9  # untouched paper defaults


def test_unknown_setting_and_bad_value(tmp_path):
    yaml_file = tmp_path / "c.yaml"
    yaml_file.write_text("temprature: 0.5\n")
    with pytest.raises(SrlmError, match="unknown setting.*temprature"):
        SamplingConfig.load(yaml_path=yaml_file)
    with pytest.raises(SrlmError, match="cannot use 'hot' as float"):
        SamplingConfig.load(temperature="hot")
    with pytest.raises(SrlmError, match="unknown preset"):
        SamplingConfig.load("huge")
    with pytest.raises(SrlmError, match="n must be >= 2"):
        SamplingConfig.load(n=1)


def test_cli_flags_from_dataclass():
    parser = argparse.ArgumentParser()
    add_config_arguments(parser, PromptGenConfig)
    args = parser.parse_args(["--preset", "tiny", "--keywords", "image,video", "--rouge-threshold", "0.5"])
    config = config_from_args(PromptGenConfig, args)
    assert config.keywords == ["image", "video"]
    assert config.rouge_threshold == 0.5
    assert config.num_prompts == presets.load("tiny")["sampling"]["prompts"]["num_prompts"] == 24


def test_enumerated_settings_list_their_choices(tmp_path):
    """A Literal-typed setting fails with the allowed values, from Python, a YAML file and a flag alike."""
    with pytest.raises(SrlmError, match="backend: 'vlm' is not allowed; choose from 'auto', 'transformers', 'vllm', "
                                        "'openai'"):
        SamplingConfig.load(backend="vlm")
    with pytest.raises(SrlmError, match="source: 'web' is not allowed; choose from 'generate', 'file'"):
        PromptGenConfig.from_dict({"source": "web"})
    parser = argparse.ArgumentParser()
    add_config_arguments(parser, JudgeConfig)
    scorer = next(a for a in parser._actions if a.dest == "scorer")
    assert scorer.choices == ("model", "random") and JudgeConfig.load(scorer="random").scorer == "random"
