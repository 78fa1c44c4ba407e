"""A config mistake is named in the words of the file: the key, what belongs there and what was given,
and "did you mean" for a mistyped key or score (not pydantic's internal wording)."""

from __future__ import annotations

import pytest

from pipeline.run.preflight import check_config
from pipeline.run_config import ConfigError, ExecutionSection, RunConfig


@pytest.mark.parametrize(
    ("yaml", "message"),
    [
        ("shard_size: abc", "shard_size: expected a whole number, got 'abc'"),
        ("shard_size: 0", "shard_size: must be >= 1, got 0"),
        ("keep_rejected: maybe", "keep_rejected: expected true or false, got 'maybe'"),
        ("image:\n  format: gif", "image.format: expected one of 'png', 'jpg' or 'webp', got 'gif'"),
        ("scoring: 3", "scoring: expected a mapping (YAML: 'key: value' lines), got 3"),
        (
            "scoring:\n  filters: clip_t > 0.2",
            "scoring.filters: expected a list (YAML: [a, b], or one '- item' per line), got 'clip_t > 0.2'",
        ),
        ("execution:\n  batch_sise: 4", "execution.batch_sise: unknown key (did you mean 'batch_size'?); "
         f"known keys here: {', '.join(sorted(ExecutionSection.model_fields))}"),
        ("executoin: {}", "executoin: unknown key (did you mean 'execution'?)"),
        ("zzz: 1", f"zzz: unknown key; known keys here: {', '.join(sorted(RunConfig.model_fields))}"),
    ],
)  # fmt: skip
def test_config_file_mistakes_say_what_is_expected(tmp_path, yaml, message):
    path = tmp_path / "run.yaml"
    path.write_text(yaml + "\n")
    with pytest.raises(ConfigError) as raised:
        RunConfig.load(path)
    text = str(raised.value)
    assert text.startswith(f"config file {path}: {message}")
    for pydantic_wording in ("Input should be", "Extra inputs are not permitted", "valid tuple"):
        assert pydantic_wording not in text


def test_sampler_settings_and_filter_scores_get_did_you_mean():
    with pytest.raises(
        ConfigError, match=r"^rbmod\.stepz: unknown key \(did you mean 'steps'\?\); known keys"
    ):
        check_config(RunConfig.load(None, {"rbmod": {"stepz": 3}}))
    with pytest.raises(ConfigError, match=r"unknown score 'clipt' \(did you mean 'clip_t'\?\); available: "):
        check_config(RunConfig.load(None, {"scoring.filters": ["clipt > 0.3"]}))
