"""The `stable-cascade` preset at full size with random weights: the real generator's time and memory,
split by phase. The first command to run on a GPU machine (no download: every weight is random).

Every component is built at its real size from the published architecture numbers (the official
Stable Cascade configs, as diffusers' conversion script and the hub configs state them):

  prior         StableCascadeUNet, 3.59B: width 2048, 32 heads, blocks [8, 24] / [24, 8], CLIP-bigG text
                (1280) and ViT-L image (768) conditions, timestep conditions (sca, crp)
  decoder       Stage B StableCascadeUNet, 1.56B: widths [320, 640, 1280, 1280], blocks [2, 6, 28, 6] /
                [6, 28, 6, 2], heads [-, -, 20, 20], up repeat mappers [3, 3, 2, 2], patch 2, effnet 16
  text encoders 2 x CLIP ViT-bigG/14 text with projection (1280 wide, 32 layers, 20 heads), one per repo,
                as the preset loads them
  image encoder CLIP ViT-L/14 vision with projection (1024 wide, 24 layers, 768-d embeds)
  effnet        EfficientNetV2-S encoder (+ 1x1 mapper to 16 channels); previewer: c_hidden 512
  csd           CSD ViT-L/14 (SOC descriptor, and the scorer's csd_style)
  vqgan         Stage A PaellaVQModel: 2 levels, 12 bottleneck blocks, 384 wide, 8192 codes, scale 0.43
  scoring       CLIP ViT-L/14 (text + vision) and DINOv2-base, shared by `Scorer` as the worker does

and the real `RBModGenerator.generate` (stylization, 1024^2, the official settings unless overridden)
and `Scorer.score` run on them. Phases (seconds; exclusive):
  conditioning  text encoders, reference features (EfficientNet, Previewer, CSD, ViT-L): once per new
                style; the timed runs reuse a cached style as a shard does
  stage_c       the Stage C loop without SOC, with the prior's attention counted as stock attention
  afa           what AFA adds over stock attention (each AFA call is timed against the stock processor
                on the same inputs; that extra stock call is left out of every total)
  soc           SOC: Previewer + CSD forward/backward + Adam, 3 iterations per step
  stage_b, stage_a, scoring
On CUDA (bf16 where the preset uses it, as `load_models` does): seconds per image at batch 1 and 8,
first without any instrumentation, then once more with the phase split; peak GPU memory. On CPU: bf16
for what the preset runs in bf16 on a GPU, one stage at a time (the big modules hold weights only during
their phase: 13.7 GB at once does not fit beside other work in 24 GiB), one Stage C step with SOC and one
Stage B step at 1024^2 to prove the full path runs, peak RSS, the phase split, FLOPs per phase (torch's
FlopCounterMode) and from them a compute floor for an H100. Ends with one key=value line.

    .venv/bin/python bench/bench_fullsize.py                       # CUDA: official settings
    .venv/bin/python bench/bench_fullsize.py --device cpu          # CPU proof run (about 15-30 min)
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import resource
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import numpy as np
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import pipeline.rbmod.decode as decode_module  # noqa: E402
import pipeline.rbmod.generate as generate_module  # noqa: E402
import pipeline.rbmod.stage_c as stage_c_module  # noqa: E402
from manifests.tiny_tokenizer import save_tiny_clip_tokenizer  # noqa: E402
from pipeline.models.presets import Models, PresetConfig  # noqa: E402
from pipeline.models.progress_bars import quiet_progress_bars  # noqa: E402
from pipeline.rbmod.afa import AFAAttnProcessor  # noqa: E402
from pipeline.rbmod.csd import CSD, vision_config_for  # noqa: E402
from pipeline.rbmod.descriptor import csd_descriptor  # noqa: E402
from pipeline.rbmod.effnet import EfficientNetEncoder  # noqa: E402
from pipeline.rbmod.image_ops import CLIP_MEAN, CLIP_STD  # noqa: E402
from pipeline.rbmod.previewer import Previewer  # noqa: E402
from pipeline.rbmod.requests import GenerationRequest, StyleRef  # noqa: E402
from pipeline.rbmod.settings import RBModSettings  # noqa: E402
from pipeline.scoring.models import ScoringConfig, ScoringModels  # noqa: E402
from pipeline.scoring.scorer import Scorer, csd_from_preset  # noqa: E402

# ---------------------------------------------------------------------------------------------------
# the real architectures

PRIOR = dict(
    in_channels=16,
    out_channels=16,
    timestep_ratio_embedding_dim=64,
    patch_size=1,
    conditioning_dim=2048,
    block_out_channels=[2048, 2048],
    num_attention_heads=[32, 32],
    down_num_layers_per_block=[8, 24],
    up_num_layers_per_block=[24, 8],
    down_blocks_repeat_mappers=[1, 1],
    up_blocks_repeat_mappers=[1, 1],
    block_types_per_layer=[["SDCascadeResBlock", "SDCascadeTimestepBlock", "SDCascadeAttnBlock"]] * 2,
    clip_text_in_channels=1280,
    clip_text_pooled_in_channels=1280,
    clip_image_in_channels=768,
    clip_seq=4,
    kernel_size=3,
    dropout=[0.1, 0.1],
    self_attn=True,
    timestep_conditioning_type=["sca", "crp"],
    switch_level=[False],
)
DECODER = dict(
    in_channels=4,
    out_channels=4,
    timestep_ratio_embedding_dim=64,
    patch_size=2,
    conditioning_dim=1280,
    block_out_channels=[320, 640, 1280, 1280],
    down_num_layers_per_block=[2, 6, 28, 6],
    up_num_layers_per_block=[6, 28, 6, 2],
    down_blocks_repeat_mappers=[1, 1, 1, 1],
    up_blocks_repeat_mappers=[3, 3, 2, 2],
    num_attention_heads=[0, 0, 20, 20],
    block_types_per_layer=[["SDCascadeResBlock", "SDCascadeTimestepBlock"]] * 2
    + [["SDCascadeResBlock", "SDCascadeTimestepBlock", "SDCascadeAttnBlock"]] * 2,
    clip_text_pooled_in_channels=1280,
    clip_seq=4,
    effnet_in_channels=16,
    pixel_mapper_in_channels=3,
    kernel_size=3,
    dropout=[0, 0, 0.1, 0.1],
    self_attn=True,
    timestep_conditioning_type=["sca"],
)
BIGG_TEXT = dict(
    hidden_size=1280,
    intermediate_size=5120,
    num_hidden_layers=32,
    num_attention_heads=20,
    projection_dim=1280,
    hidden_act="gelu",
    vocab_size=49408,
    max_position_embeddings=77,
)
VIT_L14 = dict(
    hidden_size=1024,
    intermediate_size=4096,
    num_hidden_layers=24,
    num_attention_heads=16,
    patch_size=14,
    image_size=224,
    projection_dim=768,
    hidden_act="quick_gelu",
)
CLIP_L14_TEXT = dict(
    hidden_size=768,
    intermediate_size=3072,
    num_hidden_layers=12,
    num_attention_heads=12,
    projection_dim=768,
    hidden_act="quick_gelu",
    vocab_size=49408,
    max_position_embeddings=77,
)
DINOV2_BASE = dict(
    hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12, patch_size=14
)
VQGAN = dict(levels=2, bottleneck_blocks=12, embed_dim=384, latent_channels=4, num_vq_embeddings=8192)

# Stage C and Stage B step counts of the official app, for scaling the CPU run's FLOPs
OFFICIAL_STAGE_C_STEPS, OFFICIAL_STAGE_B_STEPS = 20, 10
# H100 SXM dense peaks (TFLOP/s): bf16, tf32, fp32; 40% of peak is a good large-GEMM utilisation
H100_PEAK = {"bf16": 989e12, "tf32": 494e12, "fp32": 67e12}
UTILISATION = 0.4


@contextlib.contextmanager
def building(device: torch.device, dtype: torch.dtype):
    """Parameters created directly on `device` in `dtype` (an fp32 copy of the prior alone is 14 GB)."""
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with torch.device(device):
            yield
    finally:
        torch.set_default_dtype(previous)


def frozen(module):
    return module.eval().requires_grad_(False)


def parameters(module) -> int:
    return sum(p.numel() for p in module.parameters())


class StageAtATime:
    """CPU only: the big bf16 modules hold parameters only while their phase runs (13.7 GB of weights at
    once do not fit beside other work in 24 GiB). A released module keeps its structure (and so its AFA
    processors) with empty parameters; materializing refills them with fresh random values."""

    BIG = ("prior", "decoder", "text_encoder", "decoder_text_encoder", "image_encoder")

    def __init__(self):
        self.shapes: dict[torch.nn.Parameter, torch.Size] = {}

    def release(self, module) -> None:
        for parameter in module.parameters():
            if parameter not in self.shapes:
                self.shapes[parameter] = parameter.shape
                parameter.data = torch.empty(0, dtype=parameter.dtype)
        gc.collect()

    def materialize(self, module) -> None:
        for name, parameter in module.named_parameters():
            shape = self.shapes.pop(parameter, None)
            if shape is None:
                continue
            data = torch.empty(shape, dtype=parameter.dtype)
            if len(shape) >= 2:
                data.normal_(0, 0.02)
            elif name.endswith("weight"):  # norm scales
                data.fill_(1.0)
            else:
                data.zero_()
            parameter.data = data


def build_generation_models(
    device: torch.device, dtype: torch.dtype, tokenizer, swap: StageAtATime | None = None
) -> tuple[Models, dict]:
    from diffusers import StableCascadeUNet
    from diffusers.pipelines.deprecated.wuerstchen import PaellaVQModel
    from transformers import (
        CLIPTextConfig,
        CLIPTextModelWithProjection,
        CLIPVisionConfig,
        CLIPVisionModelWithProjection,
    )

    text_config = CLIPTextConfig(
        **BIGG_TEXT,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    built, seconds, counts = {}, {}, {}
    low = [
        ("prior", lambda: StableCascadeUNet(**PRIOR)),
        ("decoder", lambda: StableCascadeUNet(**DECODER)),
        ("text_encoder", lambda: CLIPTextModelWithProjection(text_config)),
        ("decoder_text_encoder", lambda: CLIPTextModelWithProjection(text_config)),
        ("image_encoder", lambda: CLIPVisionModelWithProjection(CLIPVisionConfig(**VIT_L14))),
        ("vqgan", lambda: PaellaVQModel(**VQGAN, scale_factor=0.43)),
    ]
    fp32 = [  # SOC modules are fp32 in every preset
        ("effnet", EfficientNetEncoder),
        ("previewer", Previewer),
        ("csd", lambda: CSD(vision_config_for(1024, 24, 14, 224, 4096), 768)),
    ]
    for group, group_dtype in ((low, dtype), (fp32, torch.float32)):
        for name, build in group:
            start = time.perf_counter()
            with building(device, group_dtype):
                built[name] = frozen(build())
            seconds[name] = time.perf_counter() - start
            count = counts[name] = parameters(built[name])
            if swap is not None and name in StageAtATime.BIG:
                swap.release(built[name])
            print(
                f"  {name:22s} {count / 1e9:6.3f}B params  {seconds[name]:6.1f} s",
                flush=True,
            )
    config = PresetConfig(name="stable-cascade", csd="random", descriptor="csd")
    models = Models(
        preset="stable-cascade",
        device=device,
        dtype=dtype,
        prior=built["prior"],
        tokenizer=tokenizer,
        text_encoder=built["text_encoder"],
        image_encoder=built["image_encoder"],
        clip_image_size=224,
        clip_mean=CLIP_MEAN,
        clip_std=CLIP_STD,
        effnet=built["effnet"],
        previewer=built["previewer"],
        descriptor=csd_descriptor(built["csd"]).to(device),
        decoder=built["decoder"],
        decoder_tokenizer=tokenizer,
        decoder_text_encoder=built["decoder_text_encoder"],
        vqgan=built["vqgan"],
        config=config,
    )
    return models, counts


def build_scorer(device: torch.device, csd, tokenizer) -> Scorer:
    """`Scorer` over random full-size CLIP ViT-L/14 + DINOv2-base, registered in the scorer's per-process
    model table under made-up ids, so `Scorer` runs exactly as in a worker (fp16 on CUDA, fp32 on CPU)."""
    from transformers import (
        BitImageProcessorPil,
        CLIPConfig,
        CLIPImageProcessorPil,
        CLIPModel,
        Dinov2Config,
        Dinov2Model,
    )

    from pipeline.scoring import models as scoring_models

    config = ScoringConfig(clip_model="random/clip-vit-large-patch14", dino_model="random/dinov2-base")
    device = scoring_models.resolve_device(device)
    dtype = scoring_models.resolve_dtype(config.dtype, device)
    text = dict(
        CLIP_L14_TEXT,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    with building(device, dtype):
        clip = CLIPModel(CLIPConfig(text_config=text, vision_config=VIT_L14, projection_dim=768))
        dino = Dinov2Model(Dinov2Config(**DINOV2_BASE, image_size=518))
    key = (config.clip_model, config.dino_model, str(device), str(dtype))
    scoring_models._LOADED[key] = ScoringModels(
        clip=frozen(clip),
        clip_tokenizer=tokenizer,
        clip_processor=CLIPImageProcessorPil(
            size={"shortest_edge": 224}, crop_size={"height": 224, "width": 224}
        ),
        dino=frozen(dino),
        dino_processor=BitImageProcessorPil(
            size={"shortest_edge": 256},
            crop_size={"height": 224, "width": 224},
            image_mean=[0.485, 0.456, 0.406],
            image_std=[0.229, 0.224, 0.225],
        ),
        device=device,
        dtype=dtype,
        max_text_tokens=77,
    )
    return Scorer(config, device=device, csd=csd)


# ---------------------------------------------------------------------------------------------------
# phase timing


class Phases:
    """Inclusive seconds (and FLOPs, with a counter) per named span. CUDA spans are timed with events,
    so timing never synchronizes the stream mid-run."""

    def __init__(self, device: torch.device, counter=None):
        self.cuda = device.type == "cuda"
        self.counter = counter
        self.spans: dict[str, list] = defaultdict(list)
        self.flops: dict[str, int] = defaultdict(int)

    def _flops(self) -> int:
        return self.counter.get_total_flops() if self.counter is not None else 0

    @contextlib.contextmanager
    def span(self, name: str):
        flops = self._flops()
        if self.cuda:
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            yield
            end.record()
            self.spans[name].append((start, end))
        else:
            began = time.perf_counter()
            yield
            self.spans[name].append(time.perf_counter() - began)
        self.flops[name] += self._flops() - flops

    def seconds(self) -> dict[str, float]:
        if self.cuda:
            torch.cuda.synchronize()
            return {k: sum(s.elapsed_time(e) for s, e in v) / 1000 for k, v in self.spans.items()}
        return {k: sum(v) for k, v in self.spans.items()}


@contextlib.contextmanager
def instrumented(models, phases: Phases):
    """Wrap the generator's phases in spans; everything is restored afterwards."""
    patches = []

    def patch(owner, name, wrapper):
        original = getattr(owner, name)
        patches.append((owner, name, original))
        setattr(owner, name, wrapper(original))

    def spanned(label):
        def wrapper(original):
            def run(*args, **kwargs):
                with phases.span(label):
                    return original(*args, **kwargs)

            return run

        return wrapper

    def afa_against_stock(original):
        def run(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, temb=None):
            with phases.span("attention_afa"):
                out = original(self, attn, hidden_states, encoder_hidden_states, attention_mask, temb)
            if self.state.mode != "off" and encoder_hidden_states is not None:
                with phases.span("attention_stock"):  # the same call without AFA, only for comparison
                    self.stock(attn, hidden_states, encoder_hidden_states, attention_mask, temb)
            return out

        return run

    patch(generate_module, "sample_stage_c", spanned("stage_c_loop"))
    patch(generate_module, "decode", spanned("decode"))
    patch(stage_c_module, "soc_refine", spanned("soc"))
    patch(decode_module, "sample_stage_b", spanned("stage_b"))
    patch(models.vqgan, "decode", spanned("stage_a"))
    patch(AFAAttnProcessor, "__call__", afa_against_stock)
    try:
        yield
    finally:
        for owner, name, original in reversed(patches):
            if owner is models.vqgan:
                del owner.decode  # back to the class method
            else:
                setattr(owner, name, original)


def exclusive(spans: dict[str, float], total: float) -> dict[str, float]:
    """Inclusive spans -> the exclusive phases (see the module docstring). `total`: the whole run without
    the comparison calls to the stock attention (and without swapping), which the Stage C loop's span
    does include."""
    get = spans.get
    stock_extra = get("attention_stock", 0.0)
    afa = get("attention_afa", 0.0) - stock_extra
    stage_c = get("stage_c_loop", 0.0) - get("soc", 0.0) - get("attention_afa", 0.0) - stock_extra
    return {
        "conditioning": total - (get("stage_c_loop", 0.0) - stock_extra) - get("decode", 0.0),
        "stage_c": stage_c + stock_extra,  # the prior with stock attention
        "afa": afa,
        "soc": get("soc", 0.0),
        "stage_b": get("stage_b", 0.0),
        "stage_a": get("stage_a", 0.0),
    }


# ---------------------------------------------------------------------------------------------------
# runs


def style_image(seed: int, size: int = 768) -> Image.Image:
    pixels = np.random.default_rng(seed).integers(0, 256, (size, size, 3), dtype=np.uint8)
    return Image.fromarray(pixels)


def requests(batch: int, style: Image.Image, offset: int) -> list[GenerationRequest]:
    return [
        GenerationRequest(
            prompt=f"a lighthouse on a cliff number {offset + i}", styles=(StyleRef(style),), seed=i
        )
        for i in range(batch)
    ]


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def timed_generate(generator, batch, style, offset, device) -> tuple[list, float]:
    synchronize(device)
    start = time.perf_counter()
    results = generator.generate(requests(batch, style, offset))
    synchronize(device)
    return results, time.perf_counter() - start


def peak_rss_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB on Linux


def print_phases(label: str, phases: dict[str, float], per: int) -> None:
    parts = "  ".join(f"{name} {seconds / per:.3f}" for name, seconds in phases.items())
    print(f"  {label} s/image by phase: {parts}", flush=True)


def run_cuda(args, models, tokenizer, summary: dict) -> None:
    settings = RBModSettings(
        steps=args.steps, stage_b_steps=args.stage_b_steps, max_batch_size=8, batch_invariant=False
    )
    generator = generate_module.RBModGenerator(models, settings)
    scorer = build_scorer(models.device, csd_from_preset(models), tokenizer)
    style = style_image(0)
    print("warm-up (kernels, style features)...", flush=True)
    results, _ = timed_generate(generator, 1, style, 0, models.device)
    scorer.score([r.image for r in results], ["warm-up"], [style], [None])
    offset = 1
    for batch in (1, 8):
        torch.cuda.reset_peak_memory_stats()
        results, seconds = timed_generate(generator, batch, style, offset, models.device)
        offset += batch
        synchronize(models.device)
        start = time.perf_counter()
        scorer.score(
            [r.image for r in results], [f"p{i}" for i in range(batch)], [style] * batch, [None] * batch
        )
        synchronize(models.device)
        scoring = time.perf_counter() - start
        peak_gb = torch.cuda.max_memory_allocated() / 2**30
        phases = Phases(models.device)
        with instrumented(models, phases):
            _, instrumented_total = timed_generate(generator, batch, style, offset, models.device)
        offset += batch
        spans = phases.seconds()
        split = exclusive(spans, instrumented_total - spans.get("attention_stock", 0.0))
        split["scoring"] = scoring
        print(
            f"batch {batch}: {seconds / batch:.3f} s/image generation, {scoring / batch:.3f} s/image "
            f"scoring, peak GPU memory {peak_gb:.1f} GiB",
            flush=True,
        )
        print_phases(f"batch {batch}", split, batch)
        summary[f"b{batch}_s_per_image"] = round((seconds + scoring) / batch, 3)
        summary[f"b{batch}_gen_s_per_image"] = round(seconds / batch, 3)
        summary[f"b{batch}_peak_gpu_gib"] = round(peak_gb, 1)
        for name, value in split.items():
            summary[f"b{batch}_{name}_s"] = round(value / batch, 3)


@contextlib.contextmanager
def stage_at_a_time(models, swap: StageAtATime, phases: Phases):
    """Swap the big modules in and out around the generator's phases (outside their timed spans)."""
    originals = {name: getattr(generate_module, name) for name in ("sample_stage_c", "decode")}

    def before(name, release, materialize):
        def run(*args, **kwargs):
            with phases.span("swap"):
                for module in release:
                    swap.release(module)
                for module in materialize:
                    swap.materialize(module)
            return originals[name](*args, **kwargs)

        return run

    m = models
    generate_module.sample_stage_c = before("sample_stage_c", [m.text_encoder, m.image_encoder], [m.prior])
    generate_module.decode = before("decode", [m.prior], [m.decoder, m.decoder_text_encoder])
    try:
        yield
    finally:
        for name, original in originals.items():
            setattr(generate_module, name, original)


def flop_counter():
    """torch's FlopCounterMode, taught the fused CPU attention kernels it has no formula for (every
    attention on CPU, AFA's included, runs through them)."""
    from torch.utils.flop_counter import FlopCounterMode, sdpa_backward_flop_count, sdpa_flop_count

    def forward(query, key, value, *args, out_shape=None, **kwargs):
        return sdpa_flop_count(query, key, value)

    def backward(grad_out, query, key, value, *args, out_shape=None, **kwargs):
        return sdpa_backward_flop_count(grad_out, query, key, value)

    aten = torch.ops.aten
    return FlopCounterMode(
        display=False,
        custom_mapping={
            aten._scaled_dot_product_flash_attention_for_cpu: forward,
            aten._scaled_dot_product_flash_attention_for_cpu_backward: backward,
        },
    )


def run_cpu(args, models, tokenizer, swap: StageAtATime, summary: dict) -> None:

    steps, stage_b_steps = args.steps or 1, args.stage_b_steps or 1
    settings = RBModSettings(steps=steps, stage_b_steps=stage_b_steps)
    generator = generate_module.RBModGenerator(models, settings)
    style = style_image(0)
    counter = flop_counter()
    phases = Phases(models.device, counter)
    print(
        f"generating one 1024^2 image: {steps} Stage C step(s) with SOC, {stage_b_steps} Stage B step(s)..."
    )
    swap.materialize(models.text_encoder)
    swap.materialize(models.image_encoder)
    with counter, instrumented(models, phases), stage_at_a_time(models, swap, phases):
        results, wall = timed_generate(generator, 1, style, 0, models.device)
    image = results[0].image
    assert image.size == (1024, 1024), image.size
    for name in StageAtATime.BIG:
        swap.release(getattr(models, name))
    spans = phases.seconds()
    total = wall - spans.get("swap", 0.0) - spans.get("attention_stock", 0.0)
    split = exclusive(spans, total)
    flops = {k: float(v) for k, v in phases.flops.items()}
    flops = exclusive(flops, counter.get_total_flops() - flops.get("attention_stock", 0.0))
    generation_rss = peak_rss_gb()

    # scoring, with the generation modules released; the CSD is the preset's, shared as in a worker
    scorer = build_scorer(models.device, csd_from_preset(models), tokenizer)
    counter = flop_counter()
    start = time.perf_counter()
    with counter:
        scorer.score([image], ["a lighthouse"], [style], [None])
    split["scoring"] = time.perf_counter() - start
    flops["scoring"] = float(counter.get_total_flops())

    print(
        f"done: {total:.1f} s generation (+ {spans.get('swap', 0.0):.0f} s swapping modules in and out), "
        f"peak RSS {peak_rss_gb():.1f} GiB ({generation_rss:.1f} GiB while generating)"
    )
    print_phases("CPU run", split, 1)
    # FLOPs of the official settings: per-step phases scaled to 20 Stage C / 10 Stage B steps
    scale = {
        "stage_c": OFFICIAL_STAGE_C_STEPS / steps,
        "afa": OFFICIAL_STAGE_C_STEPS / steps,
        "soc": OFFICIAL_STAGE_C_STEPS / steps,
        "stage_b": OFFICIAL_STAGE_B_STEPS / stage_b_steps,
    }
    official = {name: value * scale.get(name, 1.0) for name, value in flops.items()}
    print(
        "  TFLOP per image at the official settings: "
        + "  ".join(f"{k} {v / 1e12:.2f}" for k, v in official.items())
    )
    low_precision = sum(v for k, v in official.items() if k != "soc")
    bf16_s = low_precision / (H100_PEAK["bf16"] * UTILISATION)
    fast = bf16_s + official["soc"] / (H100_PEAK["tf32"] * UTILISATION)
    slow = bf16_s + official["soc"] / (H100_PEAK["fp32"] * UTILISATION)
    print(
        f"  H100 compute floor at {UTILISATION:.0%} of peak: {fast:.2f} s/image with SOC in TF32, "
        f"{slow:.2f} s in fp32 (batch 1 is launch-bound above this)"
    )
    summary.update(
        steps=steps,
        stage_b_steps=stage_b_steps,
        cpu_gen_s=round(total, 1),
        cpu_swap_s=round(spans.get("swap", 0.0), 1),
        peak_rss_gib=round(peak_rss_gb(), 1),
        generation_rss_gib=round(generation_rss, 1),
    )
    for name, value in split.items():
        summary[f"cpu_{name}_s"] = round(value, 1)
    for name, value in official.items():
        summary[f"official_{name}_tflop"] = round(value / 1e12, 2)
    summary["h100_floor_s_tf32"] = round(fast, 2)
    summary["h100_floor_s_fp32"] = round(slow, 2)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--steps", type=int, default=None, help="Stage C steps (CUDA: 20, CPU: 1)")
    parser.add_argument("--stage-b-steps", type=int, default=None, help="Stage B steps (CUDA: 10, CPU: 1)")
    parser.add_argument("--threads", type=int, default=2, help="CPU intra-op threads")
    args = parser.parse_args()
    device = torch.device(args.device)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    if device.type == "cuda" and not torch.cuda.is_bf16_supported():
        raise SystemExit("this GPU has no bf16; the stable-cascade preset needs it")
    dtype = torch.bfloat16  # on CUDA as the preset loads; on CPU as storage, so that it fits in 24 GiB

    print(
        f"building the stable-cascade preset at full size, random weights, {dtype} on {device}:", flush=True
    )
    with tempfile.TemporaryDirectory() as folder, quiet_progress_bars():
        tokenizer = save_tiny_clip_tokenizer(Path(folder) / "tokenizer")  # ids only; no hub here
        start = time.perf_counter()
        swap = StageAtATime() if device.type == "cpu" else None
        models, counts = build_generation_models(device, dtype, tokenizer, swap)
        build_s = time.perf_counter() - start
        print(f"built in {build_s:.0f} s; peak RSS {peak_rss_gb():.1f} GiB", flush=True)
        summary = {
            "device": device.type,
            "prior_params_b": round(counts["prior"] / 1e9, 2),
            "decoder_params_b": round(counts["decoder"] / 1e9, 2),
            "total_params_b": round(sum(counts.values()) / 1e9, 2),
            "build_s": round(build_s),
        }
        if device.type == "cuda":
            run_cuda(args, models, tokenizer, summary)
        else:
            run_cpu(args, models, tokenizer, swap, summary)
    print(" ".join(f"{key}={value}" for key, value in summary.items()))


if __name__ == "__main__":
    main()
