import hashlib

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from manifests.demo_inputs import CONTENT_SHAPES, STYLIZATION_PROMPTS, write_demo_inputs
from manifests.plan import read_plan_info, read_shard
from manifests.read import read_manifest
from manifests.tiny_tokenizer import save_tiny_clip_tokenizer
from pipeline.cli.app import app
from pipeline.cli.demo import demo


@pytest.fixture
def cache_home(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))  # the default tokenizer is built here


def test_demo_inputs_are_distinct_images_and_whole_word_prompts(tmp_path):
    inputs = write_demo_inputs(tmp_path)
    styles = [np.asarray(Image.open(path)) for path in inputs.styles]
    assert len(styles) == 6 and all(s.shape == (128, 128, 3) for s in styles)
    mean_colours = {tuple(s.reshape(-1, 3).mean(axis=0).round()) for s in styles}
    assert len(mean_colours) == 6  # distinct palettes
    assert all(np.unique(s.reshape(-1, 3), axis=0).shape[0] > 1 for s in styles)  # textures, not flat fills
    assert len(inputs.contents) == 3 and all(Image.open(p).size == (128, 128) for p in inputs.contents)
    tokenizer = save_tiny_clip_tokenizer(tmp_path / "tokenizer")
    for prompt in STYLIZATION_PROMPTS + list(CONTENT_SHAPES.values()):
        assert tokenizer.tokenize(prompt) == [word + "</w>" for word in prompt.split()], prompt


def test_demo_builds_validates_and_plans(tmp_path, cache_home):
    result = demo(tmp_path / "demo out", run=False)
    table = read_manifest(str(result.manifest))
    has_content = [c is not None for c in table.column("content").to_pylist()]
    assert table.num_rows == 6 * 8 + 6 * 3 == 66 and sum(has_content) == 18
    assert result.report.ok and result.report.problems == []
    info = read_plan_info(result.plan_path)
    assert info["num_rows"] == 66 and info["num_shards"] == 9 and info["shard_size"] == 8
    shard = read_shard(result.plan_path, 0)
    assert shard.num_rows == 8 and set(shard.column("style").to_pylist()) == {result.inputs.styles[0]}


def test_demo_is_reproducible_and_runs_from_the_cli(tmp_path, cache_home):
    first = demo(tmp_path / "out", run=False)
    digests = {
        p: hashlib.sha256(p.read_bytes()).hexdigest() for p in (tmp_path / "out").rglob("*") if p.is_file()
    }
    result = CliRunner().invoke(
        app, ["demo", "--plan-only", "--output", str(tmp_path / "out")], catch_exceptions=False
    )
    assert result.exit_code == 0, result.output
    assert (
        "manifest rows" in result.output
        and "66" in result.output
        and first.plan.fingerprint[:12] in result.output
    )
    again = {
        p: hashlib.sha256(p.read_bytes()).hexdigest() for p in (tmp_path / "out").rglob("*") if p.is_file()
    }
    assert again == digests  # same images, manifest and plan, byte for byte
