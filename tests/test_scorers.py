"""Pluggable scorers: the registry, a third-party scorer found through a real entry point (a temporary
dist-info on sys.path, no pip), and the aesthetic / nsfw / embedding built-ins checked against
computations done by hand from their checkpoints, plus batch invariance."""

from __future__ import annotations

import json
import sys
import textwrap
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
from PIL import Image
from run_fixtures import build_manifest, fake_config
from test_scoring import ByHand, random_image

from pipeline.scoring.aesthetic import AestheticMLP, load_aesthetic_mlp
from pipeline.scoring.models import AESTHETIC_FILE, scoring_preset
from pipeline.scoring.registry import (
    DEFAULT_SCORERS,
    ENTRY_POINT_GROUP,
    ScorerError,
    available_scorers,
    resolve_scorers,
)
from pipeline.scoring.rules import FilterRules, RuleError
from pipeline.scoring.scorer import Scorer

ALL_BUILTINS = ("clip", "dino", "csd", "leakage", "aesthetic", "nsfw", "dino_embedding", "clip_embedding")
PLUGIN = '''
from pipeline.scoring.registry import ScoreModule


class Lightness(ScoreModule):
    """Mean pixel value of the output in [0, 1], and whether the prompt mentions night."""

    name = "lightness"
    needs = frozenset({"image", "prompt"})
    outputs = ("lightness", "night_prompt")

    def score(self, batch):
        scale = self.context.options.get("scale", 1.0)
        return {
            "lightness": [scale * sum(image.convert("L").getdata()) / 255 / (image.width * image.height)
                           for image in batch.images],
            "night_prompt": [1.0 if "night" in prompt else 0.0 for prompt in batch.prompts],
        }


class Sneaky(ScoreModule):
    name = "sneaky"
    needs = frozenset({"image"})
    outputs = ("sneaky",)

    def score(self, batch):
        return {"sneaky": [len(prompt) for prompt in batch.prompts]}  # reads an undeclared input
'''


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("scorers-cache")


@pytest.fixture(scope="module")
def config(cache_dir):
    return scoring_preset("tiny", cache_dir=cache_dir, batch_size=3, scorers=ALL_BUILTINS)


@pytest.fixture
def plugin(tmp_path, monkeypatch):
    """A package `bright_scorers` with two scorers, registered through a dist-info's entry_points.txt."""
    (tmp_path / "bright_scorers.py").write_text(textwrap.dedent(PLUGIN))
    info = tmp_path / "bright_scorers-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: bright-scorers\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(
        f"[{ENTRY_POINT_GROUP}]\nlightness = bright_scorers:Lightness\nsneaky = bright_scorers:Sneaky\n"
        "broken = bright_scorers:Missing\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    yield tmp_path
    sys.modules.pop("bright_scorers", None)


def lightness_by_hand(image: Image.Image) -> float:
    return float(np.asarray(image.convert("RGB").convert("L"), dtype=np.float64).mean() / 255)


# --- the registry ------------------------------------------------------------------------------------


def test_the_registry_lists_builtins_and_refuses_bad_names():
    assert set(ALL_BUILTINS) <= set(available_scorers())
    default = resolve_scorers(DEFAULT_SCORERS)
    assert default.scores == ("clip_t", "clip_content", "dino_style", "csd_style", "leakage")
    assert default.embeddings == ("dino",)
    assert resolve_scorers(["aesthetic", "nsfw", "clip_embedding"]).scores == ("aesthetic", "nsfw")
    with pytest.raises(
        ScorerError, match=r"unknown scorer 'sharpness'; available: clip, dino, .*stylegen\.scorers"
    ):
        resolve_scorers(["clip", "sharpness"])
    with pytest.raises(ScorerError, match=r"names \['dino'\] more than once"):
        resolve_scorers(["dino", "clip", "dino"])


def test_a_third_party_scorer_is_found_through_its_entry_point(plugin, config):
    assert "lightness" in available_scorers()
    chosen = resolve_scorers(["clip", "lightness"])
    assert chosen.scores == ("clip_t", "clip_content", "lightness", "night_prompt")
    with pytest.raises(ScorerError, match=r"scorer 'broken' \(bright_scorers:Missing\) cannot be imported"):
        resolve_scorers(["broken"])

    scorer = Scorer(
        config.model_copy(
            update={"scorers": ("clip", "lightness"), "scorer_options": {"lightness": {"scale": 2.0}}}
        ),
        device="cpu",
    )
    assert scorer.names == ("clip_t", "clip_content", "lightness", "night_prompt")
    images = [random_image(i, 30 + i, 24) for i in range(4)]
    prompts = ["a city at night", "a dog", "night sky", "x"]
    scores = scorer.score(images, prompts, images[::-1], [None] * 4)
    assert scores["lightness"] == pytest.approx([2.0 * lightness_by_hand(i) for i in images], abs=1e-12)
    assert scores["night_prompt"] == [1.0, 0.0, 1.0, 0.0]
    rules = FilterRules.parse(["lightness >= 0.9", "night_prompt == 1"], scorer.names)  # known to rules
    assert len(rules) == 2
    with pytest.raises(RuleError, match="unknown score 'aesthetic'"):
        FilterRules.parse(["aesthetic > 5"], scorer.names)

    sneaky = Scorer(config.model_copy(update={"scorers": ("sneaky",)}), device="cpu")
    with pytest.raises(ScorerError, match=r"read 'prompt' without declaring it in `needs` \(\['image'\]\)"):
        sneaky.score(images[:1], ["a"], images[:1], [None])


def test_a_third_party_score_is_filtered_stored_reported_and_selectable(plugin, tmp_path, cache_dir):
    """One shard through the real worker with the plug-in enabled by name in the run config."""
    from test_worker import prepare

    from pipeline.dataset.select import Selection, select_output
    from pipeline.report.data import gather
    from pipeline.run_config import RunConfig
    from pipeline.storage import open_store
    from pipeline.worker.shard_worker import ShardWorker

    manifest = build_manifest(tmp_path, rows=6, composition_every=0)
    config = fake_config(
        shard_size=6,
        keep_rejected=True,
        model_cache_dir=str(cache_dir),
        **{
            "scoring.enabled": True,
            "scoring.scorers": ["clip", "lightness", "dino_embedding"],
            "scoring.filters": ["lightness >= 0.45"],
        },
    )
    assert isinstance(config, RunConfig)
    store, _ = prepare(tmp_path, manifest, config)
    from pipeline.run.plan import plan_run
    from pipeline.run.preflight import check_config

    check_config(config)  # the driver's early check knows the plug-in's scores
    _, record = plan_run(str(manifest), config)
    store.put_bytes("run.json", json.dumps(record).encode())
    worker = ShardWorker.from_config(config, store.uri)
    try:
        worker.run_shard(0, "a1")
    finally:
        worker.close()
    dino_width = worker.scorer.models.dino.config.hidden_size

    table = pq.read_table(next((tmp_path / "out").rglob("shard-000000.parquet"))).to_pylist()
    assert {"score_lightness", "score_night_prompt", "embedding_dino"} <= set(table[0])
    assert "score_dino_style" not in table[0]  # only the configured scorers' columns
    for row in table:
        assert row["status"] == ("kept" if row["score_lightness"] >= 0.45 else "rejected")
        assert len(row["embedding_dino"]) == dino_width
    assert {row["status"] for row in table} == {"kept", "rejected"}

    report = gather(open_store(store.uri))
    histogram = {score.name: score for score in report.scores}["lightness"]
    assert histogram.kept.size + histogram.rejected.size == len(table)
    assert [t.label for t in histogram.thresholds] == ["lightness >= 0.45"]

    summary = select_output(store.uri, str(tmp_path / "bright"), Selection("lightness", top=0.5))
    kept = sorted(
        (r for r in table if r["status"] == "kept"), key=lambda r: (-r["score_lightness"], r["uid"])
    )
    assert summary.selected == int(0.5 * len(kept) + 0.5)  # round half up, select_plan's rule
    chosen = pq.read_table(next((tmp_path / "bright").rglob("shard-000000.parquet"))).to_pylist()
    assert sorted(r["uid"] for r in chosen) == sorted(r["uid"] for r in kept[: summary.selected])
    assert all(r["embedding_dino"] is not None for r in chosen)  # embeddings travel with the samples


# --- aesthetic ---------------------------------------------------------------------------------------


def mlp_by_hand(state: dict, embedding: torch.Tensor) -> float:
    """The checkpoint's linears applied in float64, layer by layer (dropout is identity at inference)."""
    x = embedding.double().flatten()
    for index in (0, 2, 4, 6, 7):
        x = state[f"layers.{index}.weight"].double() @ x + state[f"layers.{index}.bias"].double()
    return float(x[0])


def test_aesthetic_equals_the_checkpoint_applied_by_hand(config):
    state = torch.load(Path(config.aesthetic_model) / AESTHETIC_FILE, weights_only=True)
    assert sorted(state) == sorted(f"layers.{i}.{p}" for i in (0, 2, 4, 6, 7) for p in ("weight", "bias"))
    scorer = Scorer(config, device="cpu")
    hand = ByHand(config)
    images = [random_image(200 + i, 36 + 2 * i, 40) for i in range(5)]
    scores = scorer.score(images, ["a cat"] * 5, images, [None] * 5)
    for image, value in zip(images, scores["aesthetic"], strict=True):
        embedding = hand.clip_image(image)
        expected = mlp_by_hand(state, embedding / embedding.norm())  # normalised, as LAION trained it
        assert value == pytest.approx(expected, abs=1e-4)
    assert len(set(scores["aesthetic"])) == 5


def test_aesthetic_head_loads_by_key_name_from_pth_and_safetensors(tmp_path, config):
    from safetensors.torch import save_file

    head = load_aesthetic_mlp(config.aesthetic_model, AESTHETIC_FILE)
    state = torch.load(Path(config.aesthetic_model) / AESTHETIC_FILE, weights_only=True)
    save_file(state, str(tmp_path / "head.safetensors"))
    again = load_aesthetic_mlp(str(tmp_path / "head.safetensors"), "ignored")
    x = torch.randn(3, head.input_dim)
    assert torch.equal(head(x), again(x)) and head.input_dim == 32
    real_widths = AestheticMLP((768, 1024, 128, 64, 16)).state_dict()  # the published head's layout
    assert {k: tuple(v.shape) for k, v in real_widths.items()}["layers.2.weight"] == (128, 1024)

    renamed = {key.replace("layers.", "mlp."): value for key, value in state.items()}
    torch.save(renamed, tmp_path / "other.pth")
    with pytest.raises(ValueError, match=r"missing keys \['layers.0.bias'.*unexpected keys \['mlp.0.bias'"):
        load_aesthetic_mlp(str(tmp_path / "other.pth"), "")
    with pytest.raises(
        ValueError, match="cannot load the aesthetic head 'aesthetic-model.pth' from 'nobody/none'"
    ):
        load_aesthetic_mlp("nobody/none", AESTHETIC_FILE)
    wide = AestheticMLP((64, 8, 8, 8, 8))
    torch.save(wide.state_dict(), tmp_path / "wide.pth")
    with pytest.raises(ScorerError, match="takes 64-dim CLIP embeddings but .* gives 32-dim"):
        Scorer(config.model_copy(update={"aesthetic_model": str(tmp_path / "wide.pth")}), device="cpu")


# --- nsfw --------------------------------------------------------------------------------------------


def test_nsfw_is_the_unsafe_probability_of_the_classifier(config):
    from transformers import ViTForImageClassification

    model = ViTForImageClassification.from_pretrained(config.nsfw_model).eval()
    assert model.config.id2label == {0: "normal", 1: "nsfw"}
    scorer = Scorer(config, device="cpu")
    images = [random_image(300 + i, 40, 28 + 3 * i) for i in range(4)]
    scores = scorer.score(images, ["x"] * 4, images, [None] * 4)
    processor = json.loads((Path(config.nsfw_model) / "preprocessor_config.json").read_text())
    for image, value in zip(images, scores["nsfw"], strict=True):
        size = (processor["size"]["width"], processor["size"]["height"])
        array = np.asarray(image.resize(size, Image.BILINEAR), dtype=np.float64) / 255.0
        array = (array - np.array(processor["image_mean"])) / np.array(processor["image_std"])
        pixels = torch.from_numpy(array.transpose(2, 0, 1).copy()).float()[None]
        with torch.no_grad():
            probabilities = model(pixel_values=pixels).logits.double().softmax(-1)[0]
        assert value == pytest.approx(float(probabilities[1]), abs=1e-5)
    with pytest.raises(ValueError, match=r"has no label \['unsafe'\]; its labels: \['normal', 'nsfw'\]"):
        Scorer(config.model_copy(update={"nsfw_labels": ("unsafe",)}), device="cpu")


# --- embeddings and batch invariance -----------------------------------------------------------------


def test_embeddings_are_the_normalised_dino_and_clip_vectors_in_float16(config):
    scorer = Scorer(config, device="cpu")
    assert scorer.embedding_names == ("dino", "clip")
    hand = ByHand(config)
    images = [random_image(400 + i, 32, 36) for i in range(4)]
    _, embeddings = scorer.score_with_embeddings(images, ["x"] * 4, images, [None] * 4)
    for name, by_hand in (("dino", hand.dino_cls), ("clip", hand.clip_image)):
        assert embeddings[name].dtype == np.float16 and embeddings[name].shape == (4, 32)
        for image, vector in zip(images, embeddings[name], strict=True):
            expected = by_hand(image).double().flatten()
            expected = (expected / expected.norm()).numpy()
            assert np.abs(vector.astype(np.float64) - expected).max() < 1e-3  # float16 rounding


def test_new_scores_do_not_depend_on_the_batch(config):
    """aesthetic, nsfw and the embeddings of a sample are bit-identical alone, in a batch, and at
    another position in another batch."""
    scorer = Scorer(config.model_copy(update={"batch_size": 8}), device="cpu")
    images = [random_image(500 + i, 32, 32) for i in range(6)]
    together, vectors = scorer.score_with_embeddings(images, ["x"] * 6, images, [None] * 6)
    for i in (0, 3, 5):
        alone, alone_vectors = scorer.score_with_embeddings([images[i]], ["x"], [images[i]], [None])
        shuffled, _ = scorer.score_with_embeddings(images[i:] + images[:i], ["x"] * 6, images, [None] * 6)
        for name in ("aesthetic", "nsfw"):
            assert alone[name][0] == together[name][i] == shuffled[name][0], name
        for name in ("dino", "clip"):
            assert np.array_equal(alone_vectors[name][0], vectors[name][i]), name


def test_brightness_is_the_bt601_luminance_and_loads_no_model(config):
    import numpy as np

    from pipeline.scoring.models import LazyScoringModels

    scorer = Scorer(config.model_copy(update={"scorers": ("brightness",)}))
    rng = np.random.default_rng(3)
    images = [Image.fromarray(rng.integers(0, 256, (9, 7, 3), dtype=np.uint8)) for _ in range(3)]
    scores = scorer.score(images, ["a"] * 3, images, [None] * 3)
    expected = [
        float((np.asarray(i, float) * [0.299, 0.587, 0.114]).sum(axis=2).mean() / 255) for i in images
    ]
    assert scores["brightness"] == pytest.approx(expected, abs=1e-12)
    assert isinstance(scorer.models, LazyScoringModels) and scorer.models._loaded is None  # no CLIP, no DINO


def test_naming_the_scorers_imports_no_torch():
    """Every shard's parquet schema resolves the configured scorers: a process that never scores (the
    fake generator with scoring off) must not pay torch's import for it."""
    import subprocess
    import sys

    code = (
        "import sys\n"
        "from pipeline.scoring.registry import DEFAULT_SCORERS\n"
        "from pipeline.worker.shard_files import shard_table_schema\n"
        "shard_table_schema(None, DEFAULT_SCORERS + ('aesthetic', 'nsfw', 'brightness'))\n"
        "print('torch' in sys.modules)\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "False"
