"""Caption templates a hostile config or manifest could abuse: fields are looked up by name, never as
Python attributes, a format spec is bounded, and an oversized caption fails its row only."""

from __future__ import annotations

import pytest

from pipeline.captions import MAX_CAPTION_CHARS, CaptionError, check_template, render_caption
from pipeline.run_config import ConfigError, RunConfig

ROW = {
    "prompt": "a boat",
    "style": "s.png",
    "content": None,
    "id": "u1",
    "seed": 7,
    "uid": "ab" * 16,
    "row": 3,
}


def test_dunder_names_are_manifest_columns_not_python_attributes():
    row = {**ROW, "__class__": "a column named __class__", "__dict__": "another"}
    template = "{extra.__class__} / {extra.__dict__}"
    assert check_template(template, ["__class__", "__dict__"]) == template
    assert render_caption(template, row) == "a column named __class__ / another"
    with pytest.raises(CaptionError, match=r"unknown field \{extra.__class__\}"):
        check_template("{extra.__class__}", ["artist"])
    with pytest.raises(CaptionError, match=r"unknown field \{prompt.__class__\}"):
        check_template("{prompt.__class__}")


@pytest.mark.parametrize("template", ["{prompt:>99999999}", "{prompt:.1000}", "{seed:0300d}"])
def test_a_format_spec_asking_for_huge_output_is_refused_when_the_config_loads(template):
    with pytest.raises(ConfigError, match=r"asks for more than 256 characters"):
        RunConfig.load(None, {"caption.template": template})
    assert render_caption("{prompt:>12}|{seed:03d}", ROW) == "      a boat|007"


def test_a_caption_over_the_limit_fails_its_row_with_the_reason():
    long_prompt = {**ROW, "prompt": "x" * (MAX_CAPTION_CHARS + 1)}
    with pytest.raises(ValueError, match=rf"is {MAX_CAPTION_CHARS + 1:,} characters, over the limit of"):
        render_caption("{prompt}", long_prompt)
    assert render_caption("{prompt}", {**ROW, "prompt": "x" * MAX_CAPTION_CHARS}) == "x" * MAX_CAPTION_CHARS
