"""Scorer and scoring presets, checked against embeddings computed by hand in this file.

The reference computation uses the model classes directly (vision/text towers and projections, the
DINO CLS token, the CSD backbone and head matrices) and its own numpy preprocessing arithmetic, read
from the saved preprocessor configs; cosines are taken in float64.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image

from pipeline.rbmod.csd import CSD, vision_config_for
from pipeline.rbmod.image_ops import CLIP_MEAN, CLIP_STD
from pipeline.scoring.models import (
    TINY_FOLDER,
    ScoringConfig,
    build_tiny_scoring_models,
    load_scoring_models,
    scoring_preset,
)
from pipeline.scoring.rules import FilterRules, RuleError
from pipeline.scoring.scorer import Scorer, csd_from_preset, score_rows

TOL = 1e-5


# --- fixtures ----------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("scoring-cache")


@pytest.fixture(scope="module")
def config(cache_dir) -> ScoringConfig:
    return scoring_preset("tiny", cache_dir=cache_dir, batch_size=3)


@pytest.fixture(scope="module")
def tiny_csd() -> CSD:
    torch.manual_seed(1)
    csd = CSD(vision_config_for(width=32, layers=2, patch=8, image_size=32, mlp_width=37), embed_dim=16)
    with torch.no_grad():  # the heads start at zero; give them random weights
        csd.last_layer_style.normal_()
        csd.last_layer_content.normal_()
    return csd.eval().requires_grad_(False)


def random_image(seed: int, width: int, height: int, mode: str = "RGB") -> Image.Image:
    channels = {"RGB": 3, "RGBA": 4}.get(mode, 1)
    shape = (height, width, channels) if channels > 1 else (height, width)
    pixels = np.random.default_rng(seed).integers(0, 256, shape, dtype=np.uint8)
    return Image.fromarray(pixels, mode=None).convert(mode)


# --- the independent computation ---------------------------------------------------------------------


def preprocess_by_hand(image: Image.Image, model_dir: str) -> torch.Tensor:
    """Shortest-edge bicubic resize, centre crop (floor of half the margin), /255, (x - mean) / std."""
    cfg = json.loads((Path(model_dir) / "preprocessor_config.json").read_text())
    short, crop_h, crop_w = (
        cfg["size"]["shortest_edge"],
        cfg["crop_size"]["height"],
        cfg["crop_size"]["width"],
    )
    width, height = image.size
    scale = short / min(width, height)
    new_w, new_h = (short, int(height * scale)) if width <= height else (int(width * scale), short)
    array = np.asarray(image.convert("RGB").resize((new_w, new_h), Image.BICUBIC), dtype=np.float64) / 255.0
    top, left = (new_h - crop_h) // 2, (new_w - crop_w) // 2
    array = array[top : top + crop_h, left : left + crop_w]
    array = (array - np.array(cfg["image_mean"])) / np.array(cfg["image_std"])
    return torch.from_numpy(array.transpose(2, 0, 1).copy()).float()[None]


def assert_scores_close(got: dict, expected: dict) -> None:
    """Same names, same None pattern, values equal to float32 rounding (batching changes summation order)."""
    assert list(got) == list(expected)
    for name in got:
        for a, b in zip(got[name], expected[name], strict=True):
            assert (a is None and b is None) or math.isclose(a, b, abs_tol=TOL), name


def cosine(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.double().flatten(), b.double().flatten()
    return float(a @ b / (a.norm() * b.norm()))


class ByHand:
    """Embeddings through the model classes' own submodules, one image or prompt at a time."""

    def __init__(self, config: ScoringConfig):
        from transformers import CLIPModel, CLIPTokenizer, Dinov2Model

        self.config = config
        self.clip = CLIPModel.from_pretrained(config.clip_model).eval()
        self.tokenizer = CLIPTokenizer.from_pretrained(config.clip_model)
        self.dino = Dinov2Model.from_pretrained(config.dino_model).eval()

    @torch.no_grad()
    def clip_image(self, image):
        pixels = preprocess_by_hand(image, self.config.clip_model)
        return self.clip.visual_projection(self.clip.vision_model(pixel_values=pixels).pooler_output)

    @torch.no_grad()
    def clip_text(self, prompt):
        tokens = self.tokenizer(prompt, truncation=True, max_length=77, return_tensors="pt")
        pooled = self.clip.text_model(**tokens).pooler_output
        return self.clip.text_projection(pooled)

    @torch.no_grad()
    def dino_cls(self, image):
        out = self.dino(pixel_values=preprocess_by_hand(image, self.config.dino_model))
        assert torch.equal(out.last_hidden_state[:, 0], out.pooler_output)  # CLS after the final layernorm
        return out.last_hidden_state[:, 0]


@torch.no_grad()
def csd_by_hand(csd: CSD, image: Image.Image) -> tuple[torch.Tensor, torch.Tensor]:
    """(content, style) for an image whose short side already equals the CSD input size."""
    size = csd.image_size
    array = np.asarray(image.convert("RGB"), dtype=np.float64) / 255.0
    height, width = array.shape[:2]
    assert min(height, width) == size, "keep resizing out of the by-hand CSD path"
    top, left = round((height - size) / 2), round((width - size) / 2)
    array = (array[top : top + size, left : left + size] - np.array(CLIP_MEAN)) / np.array(CLIP_STD)
    pixels = torch.from_numpy(array.transpose(2, 0, 1).copy()).float()[None]
    feature = csd.backbone(pixel_values=pixels).pooler_output
    return feature @ csd.last_layer_content, feature @ csd.last_layer_style


# --- presets and loading -----------------------------------------------------------------------------


def test_tiny_preset_is_built_once_and_loaded_back_by_path(cache_dir, config):
    folder = cache_dir / TINY_FOLDER
    assert config.clip_model == str(folder / "clip") and config.dino_model == str(folder / "dino")
    for name in ("config.json", "model.safetensors", "preprocessor_config.json", "tokenizer.json"):
        assert (folder / "clip" / name).is_file(), name
    stamp = (folder / "clip" / "model.safetensors").stat().st_mtime_ns
    assert build_tiny_scoring_models(folder) == folder
    assert scoring_preset("tiny", cache_dir=cache_dir).clip_model == config.clip_model
    assert (folder / "clip" / "model.safetensors").stat().st_mtime_ns == stamp  # not rebuilt
    assert not [p for p in cache_dir.iterdir() if p.name.startswith(".")]  # no staging leftovers

    models = load_scoring_models(config, "cpu")
    assert load_scoring_models(config, "cpu") is models  # once per process
    assert type(models.clip).__name__ == "CLIPModel" and type(models.dino).__name__ == "Dinov2Model"
    assert len(models.clip_tokenizer) > 2 and models.max_text_tokens == 77


def test_tiny_build_is_deterministic(tmp_path, cache_dir):
    from safetensors.torch import load_file

    rebuilt = build_tiny_scoring_models(tmp_path / "again")
    for part in ("clip", "dino"):
        first = load_file(str(cache_dir / TINY_FOLDER / part / "model.safetensors"))
        second = load_file(str(rebuilt / part / "model.safetensors"))
        assert first.keys() == second.keys()
        assert all(torch.equal(first[k], second[k]) for k in first)


def test_real_preset_ids_and_errors(tmp_path):
    real = scoring_preset("real", batch_size=8)
    assert (real.clip_model, real.dino_model, real.batch_size) == (
        "openai/clip-vit-large-patch14",
        "facebook/dinov2-base",
        8,
    )
    assert scoring_preset("stable-cascade") == scoring_preset("real")
    with pytest.raises(ValueError, match="unknown scoring preset 'huge'"):
        scoring_preset("huge")
    with pytest.raises(ValueError, match="batch_size"):
        ScoringConfig(batch_size=0)
    missing = str(tmp_path / "no-such-model")
    with pytest.raises(ValueError, match=f"cannot load the CLIP model from '{missing}'"):
        load_scoring_models(ScoringConfig(clip_model=missing), "cpu")


# --- scores --------------------------------------------------------------------------------------------


def test_scores_equal_the_independent_computation(config):
    scorer = Scorer(config, device="cpu")
    assert scorer.names == ("clip_t", "clip_content", "dino_style", "leakage")
    styles = [random_image(10, 48, 40), random_image(11, 30, 52)]
    contents = [None, random_image(20, 64, 64), None, random_image(21, 45, 33), None, None, None]
    images = [random_image(i, 40 + 3 * i, 50 - 2 * i) for i in range(7)]  # mixed sizes and aspects
    prompts = ["a horse", "a red house in the city", "", "a dog at night", "the sea", "x", "oil painting"]
    sample_styles = [styles[i % 2] for i in range(7)]

    scores = scorer.score(images, prompts, sample_styles, contents)  # batch_size 3: three chunks

    hand = ByHand(config)
    for i in range(7):
        output = hand.clip_image(images[i])
        assert scores["clip_t"][i] == pytest.approx(cosine(output, hand.clip_text(prompts[i])), abs=TOL)
        dino = cosine(hand.dino_cls(images[i]), hand.dino_cls(sample_styles[i]))
        assert scores["dino_style"][i] == pytest.approx(dino, abs=TOL)
        leak = cosine(output, hand.clip_image(sample_styles[i]))  # CLIP fallback without CSD
        assert scores["leakage"][i] == pytest.approx(leak, abs=TOL)
        if contents[i] is None:
            assert scores["clip_content"][i] is None
        else:
            content = cosine(output, hand.clip_image(contents[i]))
            assert scores["clip_content"][i] == pytest.approx(content, abs=TOL)

    rows = score_rows(scores)
    assert len(rows) == 7 and list(rows[3]) == list(scorer.names)
    assert rows[3]["clip_t"] == scores["clip_t"][3]


def test_identical_images_give_similarity_one(config, tiny_csd):
    image = random_image(5, 40, 32)
    for csd in (None, tiny_csd):
        scores = Scorer(config, device="cpu", csd=csd).score([image], ["a cat"], [image.copy()], [image])
        for name in ("clip_content", "dino_style", "leakage") + (("csd_style",) if csd else ()):
            assert abs(scores[name][0] - 1.0) < TOL, name


def test_long_prompts_are_truncated_to_the_text_window(config):
    words = ["a", "red", "horse", "in", "the", "sky"]
    long_prompt = " ".join(words[i % len(words)] for i in range(120))
    hand = ByHand(config)
    assert len(hand.tokenizer(long_prompt)["input_ids"]) > 77
    image = random_image(3, 32, 32)
    scores = Scorer(config, device="cpu").score(
        [image, image], [long_prompt, "a dog"], [image] * 2, [None] * 2
    )
    expected = cosine(hand.clip_image(image), hand.clip_text(long_prompt))  # truncated to 77 tokens
    assert scores["clip_t"][0] == pytest.approx(expected, abs=TOL)


def test_csd_scores_and_leakage_use_the_csd_heads(config, tiny_csd):
    scorer = Scorer(config, device="cpu", csd=tiny_csd)
    assert scorer.names == ("clip_t", "clip_content", "dino_style", "csd_style", "leakage")
    images = [random_image(30 + i, 40, 32) for i in range(4)]  # short side = CSD input size: crop only
    styles = [random_image(40, 32, 44), random_image(41, 36, 32)] * 2
    scores = scorer.score(images, ["a cat"] * 4, styles, [None] * 4)
    for i in range(4):
        out_content, out_style = csd_by_hand(tiny_csd, images[i])
        ref_content, ref_style = csd_by_hand(tiny_csd, styles[i])
        assert scores["csd_style"][i] == pytest.approx(cosine(out_style, ref_style), abs=TOL)
        assert scores["leakage"][i] == pytest.approx(cosine(out_content, ref_content), abs=TOL)


def test_the_csd_is_taken_from_a_loaded_generation_preset(tiny_csd):
    from pipeline.rbmod.descriptor import StyleDescriptor, csd_descriptor

    assert csd_from_preset(SimpleNamespace(descriptor=csd_descriptor(tiny_csd))) is tiny_csd
    clip_fallback = StyleDescriptor("clip", tiny_csd.backbone, tiny_csd.image_size)
    assert csd_from_preset(SimpleNamespace(descriptor=clip_fallback)) is None


def test_non_rgb_images_are_composited_onto_white(config, tiny_csd):
    scorer = Scorer(config, device="cpu", csd=tiny_csd)
    rgba = random_image(7, 40, 32, "RGBA")
    flattened = Image.alpha_composite(Image.new("RGBA", rgba.size, (255, 255, 255, 255)), rgba).convert("RGB")
    gray = random_image(8, 32, 32, "L")
    as_given = scorer.score([rgba, gray], ["a cat"] * 2, [gray, rgba], [rgba, None])
    as_rgb = scorer.score(
        [flattened, gray.convert("RGB")], ["a cat"] * 2, [gray.convert("RGB"), flattened], [flattened, None]
    )
    assert as_given == as_rgb


def test_style_references_are_embedded_once_per_distinct_image(config):
    scorer = Scorer(config, device="cpu")
    seen: list[int] = []
    hook = scorer.models.dino.register_forward_pre_hook(
        lambda m, a, kw: seen.append(len(kw["pixel_values"])), with_kwargs=True
    )
    try:
        style_a, style_b = random_image(50, 40, 40), random_image(51, 40, 40)
        styles = [style_a, style_b, style_a.copy(), style_b, style_a.copy(), style_a]  # copies: same pixels
        images = [random_image(60 + i, 32, 32) for i in range(6)]
        first = scorer.score(images, ["a dog"] * 6, styles, [None] * 6)
        assert sum(seen) == 6 + 2  # outputs + the two distinct styles
        seen.clear()
        again = scorer.score(images, ["a dog"] * 6, [style_b.copy()] * 6, [None] * 6)
        assert sum(seen) == 6  # style_b came from the cache
    finally:
        hook.remove()
    uncached = Scorer(config.model_copy(update={"reference_cache_size": 0}), device="cpu")
    assert_scores_close(uncached.score(images, ["a dog"] * 6, styles, [None] * 6), first)
    assert len(set(again["dino_style"])) == 6 and uncached.cached_references == 0


def test_batch_size_does_not_change_scores(config):
    images = [random_image(70 + i, 36, 36) for i in range(5)]
    styles = [random_image(80, 40, 40)] * 5
    args = (images, ["a tree"] * 5, styles, [None, images[0], None, None, images[1]])
    small = Scorer(config.model_copy(update={"batch_size": 2}), device="cpu").score(*args)
    large = Scorer(config.model_copy(update={"batch_size": 32}), device="cpu").score(*args)
    assert_scores_close(small, large)


def test_empty_batch_and_bad_inputs_name_the_sample(config):
    scorer = Scorer(config, device="cpu")
    assert scorer.score([], [], [], []) == {name: [] for name in scorer.names}
    image = random_image(1, 32, 32)
    with pytest.raises(ValueError, match=r"one entry per sample.*'prompts': 1.*'styles': 2"):
        scorer.score([image, image], ["a"], [image, image], [None, None])
    with pytest.raises(ValueError, match="sample 1: style must be a PIL image, got NoneType"):
        scorer.score([image, image], ["a", "b"], [image, None], [None, None])
    with pytest.raises(ValueError, match="sample 0: content must be a PIL image, got str"):
        scorer.score([image], ["a"], [image], ["content.png"])
    with pytest.raises(ValueError, match=r"sample 0: image image is empty \(0x5\)"):
        scorer.score([Image.new("RGB", (0, 5))], ["a"], [image], [None])
    with pytest.raises(ValueError, match="sample 1: prompt must be a string, got float"):
        scorer.score([image, image], ["a", float("nan")], [image, image], [None, None])


def test_scores_feed_the_filter_rules(config):
    scorer = Scorer(config, device="cpu")
    with pytest.raises(RuleError, match="unknown score 'csd_style'"):
        FilterRules.parse(["csd_style > 0.5"], scorer.names)  # no CSD configured
    image, other = random_image(90, 32, 32), random_image(91, 32, 32)
    scores = scorer.score([image, image], ["a cat", "a cat"], [image, other], [None, None])
    rules = FilterRules.parse(["clip_content >= 0.99", "dino_style < 0.999999"], scorer.names)
    verdicts = [rules.evaluate(row) for row in score_rows(scores)]
    assert verdicts[0].status == "rejected" and verdicts[0].rule == "dino_style < 0.999999"
    assert verdicts[0].value == scores["dino_style"][0]
    assert verdicts[1].status == "kept"  # clip_content is None in stylization mode: the rule does not apply


def test_half_precision_weights_give_close_scores(config):
    """The reduced-precision path (CUDA runs fp16 by default) loads the weights in that dtype."""
    bf16 = Scorer(config.model_copy(update={"dtype": "bfloat16"}), device="cpu")
    assert next(bf16.models.clip.parameters()).dtype == torch.bfloat16
    assert next(bf16.models.dino.parameters()).dtype == torch.bfloat16
    images = [random_image(100 + i, 40, 36) for i in range(3)]
    args = (images, ["a cat", "a dog", "a tree"], images[::-1], [None, images[0], None])
    low, full = bf16.score(*args), Scorer(config, device="cpu").score(*args)
    for name in full:
        for a, b in zip(low[name], full[name], strict=True):
            assert (a is None and b is None) or abs(a - b) < 0.03, name


def test_scores_do_not_depend_on_batch_composition_or_cache_history(config, tiny_csd):
    """Each score is bit-identical whatever else was in its batch and whichever references an earlier
    call left in the cache (reruns write byte-identical shard metadata). On CPU every sample is scored
    alone; reference embeddings are computed alone on every device."""
    images = [random_image(40 + i, 48, 40) for i in range(5)]
    styles = [random_image(60 + i % 3, 36, 52) for i in range(5)]
    contents = [random_image(80, 44, 44) if i % 2 else None for i in range(5)]
    prompts = [f"prompt number {i} " + "long " * i for i in range(5)]

    together = Scorer(config.model_copy(update={"batch_size": 5}), device="cpu", csd=tiny_csd)
    batched = together.score(images, prompts, styles, contents)

    warmed = Scorer(config.model_copy(update={"batch_size": 2}), device="cpu", csd=tiny_csd)
    warmed.score(images[3:], prompts[3:], styles[3:], contents[3:])  # caches two references first
    for i in range(5):
        alone = warmed.score([images[i]], [prompts[i]], [styles[i]], [contents[i]])
        assert {name: values[i] for name, values in batched.items()} == {
            name: values[0] for name, values in alone.items()
        }, f"sample {i}"
