"""The modules diffusers lacks (EfficientNet encoder, Previewer, CSD), the descriptor, image ops.

Key lists and parameter counts are derived here from the published architecture facts, independently
of the module code; checkpoint tests write files in the official naming and load them strictly.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from pipeline.rbmod.csd import CSD, infer_config, load_csd_checkpoint, official_to_ours, vision_config_for
from pipeline.rbmod.descriptor import clip_descriptor
from pipeline.rbmod.effnet import EfficientNetEncoder, EffNetConfig, StageSpec, load_effnet, save_effnet
from pipeline.rbmod.image_ops import (
    center_crop,
    clip_preprocess,
    imagenet_normalize,
    pil_to_tensor,
    resize_short_side,
    tensor_to_pil,
)
from pipeline.rbmod.previewer import Previewer, load_previewer, save_previewer

pytest_plugins = ["rbmod_fixtures"]  # the session-wide tiny_models / tiny_cache_dir fixtures
pytestmark = pytest.mark.usefixtures("torch_single_thread")

BN_KEYS = ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")
TINY_STAGES = (
    StageSpec(True, 1, 3, 1, 8, 8, 2),
    StageSpec(True, 2, 3, 2, 8, 16, 2),
    StageSpec(True, 2, 3, 2, 16, 16, 1),
    StageSpec(False, 2, 3, 2, 16, 24, 2),
    StageSpec(False, 3, 3, 1, 24, 24, 2),
    StageSpec(False, 2, 3, 2, 24, 32, 1),
)


def randomize(module: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Give every float parameter and BatchNorm buffer a distinct random value, so a load that skipped
    anything (or mixed two tensors up) shows."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, tensor in module.state_dict().items():
            if name.endswith("num_batches_tracked"):
                tensor.fill_(7)
            elif name.endswith("running_var"):
                tensor.copy_(torch.rand(tensor.shape, generator=gen) + 0.5)
            elif tensor.is_floating_point():
                tensor.copy_(torch.randn(tensor.shape, generator=gen) * 0.1)
    return module.eval()


def assert_same_state(a: torch.nn.Module, b: torch.nn.Module) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert list(sa) == list(sb)
    for key in sa:
        assert torch.equal(sa[key], sb[key]), key


# ---------------------------------------------------------------- EfficientNet: architecture facts

# EfficientNetV2-S (Tan & Le 2021, Table 4): stem conv3x3/2 -> 24; stages as
# (fused?, expand, stride, out, layers); then conv1x1 -> 1280. MBConv squeeze width = block input / 4.
V2S_FACTS = [(True, 1, 1, 24, 2), (True, 4, 2, 48, 4), (True, 4, 2, 64, 4), (False, 4, 2, 128, 6)]
V2S_FACTS += [(False, 6, 1, 160, 9), (False, 6, 2, 256, 15)]


def expected_effnet_layout(stem=24, facts=V2S_FACTS, last=1280, latent=16):
    """(state-dict keys, parameter count) of torchvision's efficientnet_v2_s().features + the mapper."""
    keys, params = [], 0

    def conv_bn(prefix, c_in, c_out, k, groups=1):
        nonlocal params
        keys.append(f"{prefix}.0.weight")
        keys.extend(f"{prefix}.1.{name}" for name in BN_KEYS)
        params += c_out * (c_in // groups) * k * k + 2 * c_out

    conv_bn("backbone.0", 3, stem, 3)
    c_in = stem
    for stage, (fused, expand, _stride, c_out, layers) in enumerate(facts, start=1):
        for block in range(layers):
            prefix = f"backbone.{stage}.{block}.block"
            hidden = c_in * expand
            if fused and expand == 1:
                conv_bn(f"{prefix}.0", c_in, c_out, 3)
            elif fused:
                conv_bn(f"{prefix}.0", c_in, hidden, 3)
                conv_bn(f"{prefix}.1", hidden, c_out, 1)
            else:
                squeeze = max(1, c_in // 4)
                conv_bn(f"{prefix}.0", c_in, hidden, 1)
                conv_bn(f"{prefix}.1", hidden, hidden, 3, groups=hidden)
                keys += [f"{prefix}.2.fc1.weight", f"{prefix}.2.fc1.bias"]
                keys += [f"{prefix}.2.fc2.weight", f"{prefix}.2.fc2.bias"]
                params += hidden * squeeze + squeeze + squeeze * hidden + hidden
                conv_bn(f"{prefix}.3", hidden, c_out, 1)
            c_in = c_out
    conv_bn(f"backbone.{len(facts) + 1}", c_in, last, 1)
    keys += ["mapper.0.weight"] + [f"mapper.1.{name}" for name in BN_KEYS[2:]]
    params += last * latent
    return keys, params


def test_effnet_v2s_key_list_and_parameter_count_match_the_architecture():
    with torch.device("meta"):
        model = EfficientNetEncoder()
    keys, params = expected_effnet_layout()
    assert sorted(model.state_dict()) == sorted(keys)
    assert len(keys) == 784
    assert sum(p.numel() for p in model.parameters()) == params
    # torchvision's published efficientnet_v2_s has 21,458,488 parameters, 1,281,000 of them in the
    # 1280->1000 classifier; the mapper adds 1280*16.
    assert params == 21_458_488 - 1_281_000 + 1280 * 16 == 20_197_968
    for key in [
        "backbone.0.0.weight",
        "backbone.0.1.running_mean",
        "backbone.1.0.block.0.0.weight",
        "backbone.2.0.block.1.0.weight",
        "backbone.4.0.block.2.fc1.weight",
        "backbone.6.14.block.3.1.running_var",
        "backbone.7.0.weight",
        "mapper.0.weight",
        "mapper.1.running_mean",
    ]:
        assert key in model.state_dict(), key
    assert "mapper.1.weight" not in model.state_dict()  # BatchNorm2d(16, affine=False)
    bns = [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert {m.eps for m in bns[:-1]} == {1e-3} and bns[-1].eps == 1e-5


def test_effnet_real_config_has_stride_32_and_16_latent_channels():
    model = EfficientNetEncoder().eval()
    with torch.no_grad():
        assert model(torch.randn(1, 3, 96, 64)).shape == (1, 16, 3, 2)


def test_effnet_tiny_config_uses_the_same_key_pattern():
    config = EffNetConfig(stem_channels=8, stages=TINY_STAGES, last_channels=32)
    facts = [(s.fused, s.expand_ratio, s.stride, s.out_channels, s.layers) for s in TINY_STAGES]
    keys, params = expected_effnet_layout(8, facts, 32)
    model = EfficientNetEncoder(config)
    assert sorted(model.state_dict()) == sorted(keys)
    assert sum(p.numel() for p in model.parameters()) == params


def reference_bn(x, prefix, state, act=True):
    out = F.batch_norm(
        x,
        state[f"{prefix}.running_mean"],
        state[f"{prefix}.running_var"],
        state[f"{prefix}.weight"],
        state[f"{prefix}.bias"],
        eps=1e-3,
    )
    return F.silu(out) if act else out


def test_effnet_blocks_compute_what_the_published_structure_says():
    """One FusedMBConv (expand 2, residual) and one MBConv (SE, residual), recomputed with functional ops."""
    model = randomize(
        EfficientNetEncoder(EffNetConfig(stem_channels=8, stages=TINY_STAGES, last_channels=32))
    )
    state = model.state_dict()
    gen = torch.Generator().manual_seed(1)

    x = torch.randn(2, 16, 8, 8, generator=gen)  # stage 2, block 1: fused, 16 -> 16, stride 1
    p = "backbone.2.1.block"
    h = reference_bn(F.conv2d(x, state[f"{p}.0.0.weight"], padding=1), f"{p}.0.1", state)
    h = reference_bn(F.conv2d(h, state[f"{p}.1.0.weight"]), f"{p}.1.1", state, act=False)
    with torch.no_grad():
        assert torch.allclose(model.backbone[2][1](x), h + x, atol=1e-5)

    x = torch.randn(2, 24, 4, 4, generator=gen)  # stage 5, block 1: MBConv 24 -> 24, expand 3, stride 1
    p = "backbone.5.1.block"
    h = reference_bn(F.conv2d(x, state[f"{p}.0.0.weight"]), f"{p}.0.1", state)
    h = reference_bn(F.conv2d(h, state[f"{p}.1.0.weight"], padding=1, groups=72), f"{p}.1.1", state)
    s = F.silu(F.conv2d(h.mean((2, 3), keepdim=True), state[f"{p}.2.fc1.weight"], state[f"{p}.2.fc1.bias"]))
    h = h * torch.sigmoid(F.conv2d(s, state[f"{p}.2.fc2.weight"], state[f"{p}.2.fc2.bias"]))
    h = reference_bn(F.conv2d(h, state[f"{p}.3.0.weight"]), f"{p}.3.1", state, act=False)
    with torch.no_grad():
        assert torch.allclose(model.backbone[5][1](x), h + x, atol=1e-5)


def test_effnet_checkpoint_loads_strictly_and_reproduces_outputs(tmp_path):
    config = EffNetConfig(stem_channels=8, stages=TINY_STAGES, last_channels=32)
    model = randomize(EfficientNetEncoder(config))
    path = tmp_path / "effnet_encoder.safetensors"
    save_effnet(model, path)
    loaded = load_effnet(path)
    assert_same_state(model, loaded)
    assert not loaded.training and not any(p.requires_grad for p in loaded.parameters())
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(model(x), loaded(x))


@pytest.mark.parametrize("damage", ["drop", "extra", "shape"])
def test_effnet_bad_checkpoint_names_the_file_and_the_keys(tmp_path, damage):
    config = EffNetConfig(stem_channels=8, stages=TINY_STAGES, last_channels=32)
    path = tmp_path / "effnet_encoder.safetensors"
    save_effnet(EfficientNetEncoder(config), path)
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as handle:
        metadata = handle.metadata()
    state = load_file(str(path))
    if damage == "drop":
        del state["backbone.4.0.block.2.fc1.weight"]
    elif damage == "extra":
        state["backbone.8.0.weight"] = torch.zeros(1)
    else:
        state["mapper.0.weight"] = torch.zeros(16, 31, 1, 1)
    save_file(state, str(path), metadata=metadata)
    with pytest.raises(ValueError) as err:
        load_effnet(path)
    message = str(err.value)
    assert str(path) in message
    expected = {
        "drop": "backbone.4.0.block.2.fc1.weight",
        "extra": "backbone.8.0.weight",
        "shape": "mapper.0.weight",
    }
    assert expected[damage] in message


# ---------------------------------------------------------------- Previewer


def test_previewer_real_config_keys_shape_and_size():
    model = Previewer().eval()
    convs = {0: (16, 512, 1), 3: (512, 512, 3), 9: (256, 256, 3), 15: (128, 128, 3), 21: (128, 128, 3)}
    convs[24] = (128, 3, 1)
    transposed = {6: (512, 256), 12: (256, 128), 18: (128, 128)}
    expected = []
    for i in range(25):
        if i in convs or i in transposed:
            expected += [f"blocks.{i}.weight", f"blocks.{i}.bias"]
        elif i % 3 == 2:
            expected += [f"blocks.{i}.{name}" for name in BN_KEYS]
    assert list(model.state_dict()) == expected
    assert len(model.blocks) == 25
    assert all(isinstance(model.blocks[i], torch.nn.GELU) for i in range(1, 24, 3))
    state = model.state_dict()
    for i, (c_in, c_out, k) in convs.items():
        assert tuple(state[f"blocks.{i}.weight"].shape) == (c_out, c_in, k, k)
    for i, (c_in, c_out) in transposed.items():
        assert tuple(state[f"blocks.{i}.weight"].shape) == (c_in, c_out, 2, 2)  # ConvTranspose2d layout
    params = sum(p.numel() for p in model.parameters())
    assert abs(params * 4 / 1e6 - 15.9) < 0.1  # the hub file is 15.9 MB of fp32
    with torch.no_grad():
        assert model(torch.randn(1, 16, 24, 24)).shape == (1, 3, 192, 192)


def test_previewer_checkpoint_loads_strictly_with_widths_from_shapes(tmp_path):
    model = randomize(Previewer(c_hidden=32))
    path = tmp_path / "previewer.safetensors"
    save_previewer(model, path)
    loaded = load_previewer(path)
    assert loaded.c_hidden == 32
    assert_same_state(model, loaded)
    z = torch.randn(2, 16, 3, 3)
    with torch.no_grad():
        assert torch.equal(model(z), loaded(z))
    state = load_file(str(path))
    del state["blocks.23.running_var"]
    save_file(state, str(path))
    with pytest.raises(ValueError, match=r"blocks\.23\.running_var"):
        load_previewer(path)


def test_checkpoints_without_batchnorm_counters_load_as_torch_strict_loads_them(tmp_path):
    """Files saved without `num_batches_tracked` (torch's strict load accepts them) load, same outputs."""
    previewer = randomize(Previewer(c_hidden=32))
    effnet = randomize(
        EfficientNetEncoder(EffNetConfig(stem_channels=8, stages=TINY_STAGES, last_channels=32))
    )
    for model, save, load, x in (
        (previewer, save_previewer, load_previewer, torch.randn(2, 16, 3, 3)),
        (effnet, save_effnet, load_effnet, torch.randn(2, 3, 64, 64)),
    ):
        path = tmp_path / "model.safetensors"
        save(model, path)
        with safe_open(str(path), framework="pt") as handle:
            metadata = handle.metadata()
        state = {k: v for k, v in load_file(str(path)).items() if not k.endswith("num_batches_tracked")}
        save_file(state, str(path), metadata=metadata)
        loaded = load(path)
        with torch.no_grad():
            assert torch.equal(model(x), loaded(x))


# ---------------------------------------------------------------- CSD


def ours_to_official(state: dict) -> dict:
    """Our CSD naming -> the official checkpoint's (OpenAI CLIP visual tower, DDP `module.` prefix)."""
    official = {}
    fixed = {
        "backbone.embeddings.class_embedding": "backbone.class_embedding",
        "backbone.embeddings.position_embedding.weight": "backbone.positional_embedding",
        "backbone.embeddings.patch_embedding.weight": "backbone.conv1.weight",
        "backbone.pre_layrnorm.weight": "backbone.ln_pre.weight",
        "backbone.pre_layrnorm.bias": "backbone.ln_pre.bias",
        "backbone.post_layernorm.weight": "backbone.ln_post.weight",
        "backbone.post_layernorm.bias": "backbone.ln_post.bias",
        "last_layer_style": "last_layer_style",
        "last_layer_content": "last_layer_content",
    }
    for ours, theirs in fixed.items():
        official[theirs] = state[ours]
    layers = {int(k.split(".")[3]) for k in state if k.startswith("backbone.encoder.layers.")}
    for i in layers:
        src, dst = f"backbone.encoder.layers.{i}.", f"backbone.transformer.resblocks.{i}."
        for kind in ("weight", "bias"):
            qkv = [state[f"{src}self_attn.{p}_proj.{kind}"] for p in "qkv"]
            official[f"{dst}attn.in_proj_{kind}"] = torch.cat(qkv)
            official[f"{dst}attn.out_proj.{kind}"] = state[f"{src}self_attn.out_proj.{kind}"]
            official[f"{dst}ln_1.{kind}"] = state[f"{src}layer_norm1.{kind}"]
            official[f"{dst}ln_2.{kind}"] = state[f"{src}layer_norm2.{kind}"]
            official[f"{dst}mlp.c_fc.{kind}"] = state[f"{src}mlp.fc1.{kind}"]
            official[f"{dst}mlp.c_proj.{kind}"] = state[f"{src}mlp.fc2.{kind}"]
    return {f"module.{k}": v.clone() for k, v in official.items()}


def openai_visual_forward(official: dict, pixels: torch.Tensor, heads: int) -> torch.Tensor:
    """OpenAI CLIP's VisionTransformer forward (proj removed), written from its published structure."""
    sd = {k.removeprefix("module.backbone."): v for k, v in official.items()}
    width = sd["conv1.weight"].shape[0]
    x = F.conv2d(pixels, sd["conv1.weight"], stride=sd["conv1.weight"].shape[-1])
    x = x.flatten(2).transpose(1, 2)
    x = torch.cat([sd["class_embedding"].expand(x.shape[0], 1, width), x], dim=1) + sd["positional_embedding"]
    x = F.layer_norm(x, (width,), sd["ln_pre.weight"], sd["ln_pre.bias"])
    layer = 0
    while f"transformer.resblocks.{layer}.ln_1.weight" in sd:
        p = f"transformer.resblocks.{layer}."
        h = F.layer_norm(x, (width,), sd[p + "ln_1.weight"], sd[p + "ln_1.bias"]).transpose(0, 1)
        h, _ = F.multi_head_attention_forward(
            h, h, h, width, heads, sd[p + "attn.in_proj_weight"], sd[p + "attn.in_proj_bias"],
            None, None, False, 0.0, sd[p + "attn.out_proj.weight"], sd[p + "attn.out_proj.bias"],
            training=False, need_weights=False,
        )  # fmt: skip
        x = x + h.transpose(0, 1)
        h = F.layer_norm(x, (width,), sd[p + "ln_2.weight"], sd[p + "ln_2.bias"])
        h = F.linear(h, sd[p + "mlp.c_fc.weight"], sd[p + "mlp.c_fc.bias"])
        h = h * torch.sigmoid(1.702 * h)  # QuickGELU
        x = x + F.linear(h, sd[p + "mlp.c_proj.weight"], sd[p + "mlp.c_proj.bias"])
        layer += 1
    return F.layer_norm(x[:, 0], (width,), sd["ln_post.weight"], sd["ln_post.bias"])


def tiny_csd(seed=0) -> CSD:
    return randomize(CSD(vision_config_for(128, 2, 8, 32, 512), embed_dim=24), seed)


def test_csd_official_checkpoint_loads_strictly_and_matches_the_openai_forward(tmp_path):
    model = tiny_csd()
    official = ours_to_official(model.state_dict())
    path = tmp_path / "checkpoint.pth"
    torch.save({"model_state_dict": official, "epoch": 3}, path)

    loaded = load_csd_checkpoint(path)
    assert loaded.backbone.config.num_attention_heads == 2  # width 128 / 64
    assert_same_state(model, loaded)

    pixels = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        feature, content, style = loaded(pixels)
        reference = openai_visual_forward(official, pixels, heads=2)
    assert torch.allclose(feature, reference, atol=1e-5)
    w_style, w_content = official["module.last_layer_style"], official["module.last_layer_content"]
    assert torch.allclose(style, F.normalize(reference @ w_style, dim=1), atol=1e-5)
    assert torch.allclose(content, F.normalize(reference @ w_content, dim=1), atol=1e-5)
    assert torch.allclose(style.norm(dim=1), torch.ones(3)) and style.shape == (3, 24)


def test_csd_safetensors_in_either_naming_loads_too(tmp_path):
    model = tiny_csd(seed=3)
    ours, official = tmp_path / "ours.safetensors", tmp_path / "official.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(ours))
    save_file(ours_to_official(model.state_dict()), str(official))
    assert_same_state(model, load_csd_checkpoint(ours))
    assert_same_state(model, load_csd_checkpoint(official))


def test_csd_pth_with_pickled_objects_is_refused_with_advice(tmp_path):
    import argparse

    path = tmp_path / "checkpoint.pth"
    state = ours_to_official(tiny_csd().state_dict())
    torch.save({"model_state_dict": state, "args": argparse.Namespace(lr=1)}, path)
    with pytest.raises(ValueError, match=r"checkpoint\.pth: torch\.load\(weights_only=True\) refused it"):
        load_csd_checkpoint(path)


def test_csd_bad_checkpoint_names_missing_and_unexpected_keys(tmp_path):
    official = ours_to_official(tiny_csd().state_dict())
    del official["module.backbone.transformer.resblocks.1.mlp.c_fc.bias"]
    official["module.backbone.proj"] = torch.zeros(128, 24)
    path = tmp_path / "checkpoint.pth"
    torch.save({"model_state_dict": official}, path)
    with pytest.raises(ValueError) as err:
        load_csd_checkpoint(path)
    message = str(err.value)
    assert str(path) in message
    assert "backbone.encoder.layers.1.mlp.fc1.bias" in message and "backbone.proj" in message
    with pytest.raises(FileNotFoundError, match="nope.pth"):
        load_csd_checkpoint(tmp_path / "nope.pth")


def test_csd_real_vit_l14_naming_converts_to_exactly_our_keys():
    """The real checkpoint's layout (ViT-L/14: width 1024, 24 layers, 257 positions, heads 1024x768)."""
    with torch.device("meta"):
        ours = CSD(vision_config_for(1024, 24, 14, 224, 4096), embed_dim=768)
    official = {k.removeprefix("module."): v for k, v in ours_to_official(ours.state_dict()).items()}
    assert len(official) == 7 + 2 + 24 * 12
    assert tuple(official["backbone.transformer.resblocks.0.attn.in_proj_weight"].shape) == (3072, 1024)
    converted = official_to_ours(official)
    expected = ours.state_dict()
    assert sorted(converted) == sorted(expected)
    assert all(converted[k].shape == expected[k].shape for k in expected)
    config, embed_dim = infer_config(converted)
    assert (config.hidden_size, config.num_hidden_layers, config.num_attention_heads) == (1024, 24, 16)
    assert (config.patch_size, config.image_size, config.intermediate_size, embed_dim) == (14, 224, 4096, 768)


# ---------------------------------------------------------------- image ops


def test_resize_short_side_follows_torchvision_sizes_and_matches_pil():
    rng = np.random.default_rng(0)
    image = Image.fromarray(rng.integers(0, 256, (300, 451, 3), dtype=np.uint8))
    tensor = pil_to_tensor(image)
    assert torch.equal(tensor, torch.from_numpy(np.array(image)).permute(2, 0, 1).float() / 255)
    assert resize_short_side(tensor, 768).shape == (3, 768, 1154)  # int(768 * 451 / 300)
    assert resize_short_side(tensor[:, :, :200], 100).shape == (3, 150, 100)
    ours = resize_short_side(tensor[None], 100, mode="bicubic")[0]
    pil = pil_to_tensor(image.resize((150, 100), Image.BICUBIC))  # PIL: antialiased bicubic
    assert ours.shape == pil.shape
    assert (ours - pil).abs().mean() < 1 / 255


def test_center_crop_and_clip_preprocess():
    x = torch.arange(2 * 3 * 7 * 10, dtype=torch.float32).reshape(2, 3, 7, 10)
    assert torch.equal(
        center_crop(x, 5), x[..., 1:6, 2:7]
    )  # margins 2/2=1 and 5/2=2.5 -> 2 (round half even)
    with pytest.raises(ValueError, match="smaller than the crop"):
        center_crop(x, 8)
    images = torch.rand(2, 3, 20, 30)
    mean, std = (0.1, 0.2, 0.3), (0.5, 0.6, 0.7)
    expected = F.interpolate(images, size=(16, 24), mode="bicubic", antialias=True)[..., 4:20]
    expected = (expected - torch.tensor(mean).view(3, 1, 1)) / torch.tensor(std).view(3, 1, 1)
    assert torch.allclose(clip_preprocess(images, 16, mean, std), expected, atol=1e-6)
    pil = tensor_to_pil(torch.tensor([[[[0.0, 0.5, 1.0, 2.0]]]]).expand(1, 3, 1, 4))[0]
    assert np.asarray(pil)[0, :, 0].tolist() == [0, 128, 255, 255]


# ---------------------------------------------------------------- descriptor


def test_csd_descriptor_gives_unit_vectors_and_gradients_reach_the_image(tiny_models):
    descriptor = tiny_models.descriptor
    assert descriptor.kind == "csd"
    images = torch.rand(2, 3, 32, 32, requires_grad=True)
    content, style = descriptor(images)
    assert content.shape == style.shape == (2, descriptor.encoder.embed_dim)
    assert torch.allclose(content.norm(dim=1), torch.ones(2)) and torch.allclose(
        style.norm(dim=1), torch.ones(2)
    )
    with torch.no_grad():
        _, ref_content, ref_style = descriptor.encoder(clip_preprocess(images, 32))
    assert torch.allclose(style, ref_style) and torch.allclose(content, ref_content)
    style.sum().backward()
    assert images.grad is not None and images.grad.abs().sum() > 0
    assert all(p.grad is None for p in descriptor.parameters())


def test_clip_fallback_descriptor(tiny_models):
    m = tiny_models
    descriptor = clip_descriptor(m.image_encoder, m.clip_image_size, m.clip_mean, m.clip_std)
    assert descriptor.kind == "clip"
    previews = torch.rand(2, 3, 48, 40, requires_grad=True)  # any size: clip_preprocess resizes and crops
    content, style = descriptor(previews)
    assert torch.equal(content, style)
    with torch.no_grad():
        pixels = clip_preprocess(previews, m.clip_image_size, m.clip_mean, m.clip_std)
        expected = F.normalize(m.image_encoder(pixel_values=pixels).image_embeds, dim=1)
    assert torch.allclose(style, expected, atol=1e-6)
    assert torch.allclose(style.norm(dim=1), torch.ones(2))
    (1 - style[0] @ style[1]).backward()
    assert previews.grad.abs().sum() > 0


def test_tiny_pieces_have_consistent_geometry(tiny_models):
    m, c = tiny_models, tiny_models.config
    images = torch.rand(4, 3, c.reference_size, c.reference_size, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        latent = m.effnet(imagenet_normalize(images))
        preview = m.previewer(latent)
    assert latent.shape == (4, 16, c.stage_c_latent_size, c.stage_c_latent_size)
    assert preview.shape == (4, 3, c.preview_size, c.preview_size)
    # calibrated BatchNorm: unit-scale latents like the trained encoder's; previews centred in [0,1]
    assert 0.5 < latent.std().item() < 2.0
    assert math.isclose(preview.mean().item(), 0.5, abs_tol=0.1)
