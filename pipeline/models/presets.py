"""Model presets: everything RB-Modulation needs, loaded once per worker into a `Models` bundle.

* `stable-cascade`: the real weights, from hub ids or local folders with the hub layout:
    prior repo (stabilityai/stable-cascade-prior):
        prior/ text_encoder/ tokenizer/ image_encoder/ feature_extractor/
    decoder repo (stabilityai/stable-cascade):
        decoder/ text_encoder/ tokenizer/ vqgan/ effnet_encoder.safetensors previewer.safetensors
    CSD weights: one file (official `.pth` or our safetensors); without it SOC falls back to CLIP.
* `tiny`: random weights from small configs, built once (seeded) into a cache folder with exactly that
  layout, then loaded by the very same loader. For tests and the demo on CPU.

Any source may also be an `s3://bucket/prefix/` folder with the hub layout (or, for CSD, one file), as
written by `stylegen models stage`: it is copied once per node into the model cache (pipeline.models.cache)
and loaded from there; recorded metadata keeps the S3 URI.

Every component is checked for presence before anything heavy loads, so a missing folder or an
uncached hub id fails in well under a second with a message naming the component and the path.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import uuid
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict

from pipeline.errors import UserError

log = logging.getLogger(__name__)

PRIOR_REPO = "stabilityai/stable-cascade-prior"
DECODER_REPO = "stabilityai/stable-cascade"
TINY_SEED = 20240527
# The official `StageA.decode` multiplies by 0.43; diffusers' PaellaVQModel defaults to 0.3764 and a
# loaded vqgan config may carry either, so the preset sets it explicitly (warned about when they differ).
OFFICIAL_STAGE_A_SCALE = 0.43
TINY_FORMAT = 3  # bump when the tiny builder changes what it writes
PRESET_NAMES = ("tiny", "stable-cascade")
PATH_KEYS = {
    "prior",
    "prior_revision",
    "prior_subfolder",
    "decoder",
    "decoder_revision",
    "decoder_subfolder",
    "csd",
    "variant",
}


class PresetError(UserError, RuntimeError):
    """A preset cannot be loaded: names the component and where it was looked for."""


class PresetConfig(BaseModel):
    """Where each component comes from (recorded in sample metadata) and the preset's geometry."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: Literal["tiny", "stable-cascade"]
    prior: str = PRIOR_REPO  # hub id or local folder
    prior_revision: str | None = None
    prior_subfolder: str = "prior"  # "prior_lite" for the 1B prior
    decoder: str = DECODER_REPO
    decoder_revision: str | None = None
    decoder_subfolder: str = "decoder"  # "decoder_lite" for the 700M Stage B
    variant: str | None = "bf16"  # of the prior/decoder weight files; local folders may hold plain files
    csd: str | None = None  # CSD checkpoint file
    descriptor: Literal["csd", "clip"] = "clip"
    # geometry: 1024^2 images <- 16x24x24 Stage C latents; references resized to 768 (short side) for the
    # EfficientNet encoder; previews are 8x the latent; Stage B latent = stage_b_latent_scale x Stage C
    image_size: int = 1024
    stage_c_latent_size: int = 24
    reference_size: int = 768
    preview_size: int = 192
    stage_c_steps: int = 20
    stage_b_latent_scale: float = 10.67
    stage_b_steps: int = 10
    stage_b_guidance_scale: float = 1.1
    stage_a_scale_factor: float = OFFICIAL_STAGE_A_SCALE  # latent x this before Stage A decodes it
    components: dict[str, dict[str, Any]] = {}  # filled by the loader: source, revision, resolved commit


@dataclass
class Models:
    preset: str
    device: Any  # torch.device
    dtype: Any  # torch.dtype of prior/decoder/encoders/vqgan; SOC modules are always fp32
    prior: Any  # diffusers.StableCascadeUNet
    tokenizer: Any  # transformers.CLIPTokenizer
    text_encoder: Any  # transformers.CLIPTextModelWithProjection
    image_encoder: Any  # transformers.CLIPVisionModelWithProjection
    clip_image_size: int
    clip_mean: tuple
    clip_std: tuple
    effnet: Any  # pipeline.rbmod.effnet.EfficientNetEncoder
    previewer: Any  # pipeline.rbmod.previewer.Previewer
    descriptor: Any  # pipeline.rbmod.descriptor.StyleDescriptor
    decoder: Any  # diffusers.StableCascadeUNet
    decoder_tokenizer: Any
    decoder_text_encoder: Any
    vqgan: Any  # PaellaVQModel
    config: PresetConfig


# ----------------------------------------------------------------------------------------------------
# loading


def load_preset(
    name: str,
    *,
    device: str | None = None,
    paths: dict | None = None,
    cache_dir: Path | None = None,
    s3_options: dict | None = None,
) -> Models:
    """Load a preset. `paths` overrides sources: prior / decoder (hub id, local folder or s3:// folder),
    their `_revision` and `_subfolder`, `csd` (file, s3:// file or None), `variant`. `cache_dir` is where
    `tiny` is built and s3:// sources are copied (default: $STYLEGEN_CACHE, else ~/.cache/stylegen);
    `s3_options` are the run config's `storage` options for those copies."""
    paths = dict(paths or {})
    unknown = sorted(set(paths) - PATH_KEYS)
    if unknown:
        raise PresetError(f"unknown keys in paths: {unknown}; expected some of {sorted(PATH_KEYS)}")
    if name == "tiny":
        root = ensure_tiny_cache(cache_dir)
        base = tiny_preset_config(root)
    elif name == "stable-cascade":
        base = PresetConfig(name="stable-cascade", csd=os.environ.get("STYLEGEN_CSD") or None)
    else:
        raise PresetError(f"unknown preset {name!r}; expected one of {', '.join(map(repr, PRESET_NAMES))}")
    overrides = {k: str(v) if isinstance(v, Path) else v for k, v in paths.items()}
    fields = {**base.model_dump(), **overrides}
    fields["descriptor"] = "csd" if fields["csd"] else "clip"
    config = PresetConfig.model_validate(fields)
    return load_models(config, device=device, cache_dir=cache_dir, s3_options=s3_options)


def is_local_source(source: str) -> bool:
    """A local folder or file rather than a hub id ('org/name') or a staged s3:// folder."""
    if source.startswith("s3://"):
        return False
    return source.startswith(("/", ".", "~")) or os.path.exists(source) or source.count("/") != 1


def _locate(
    source: str, relpath: str, revision: str | None, component: str, copy: str | None = None
) -> tuple[str, str | None]:
    """Check that `relpath` exists under `source` (folder or hub repo; an s3:// folder through its local
    `copy`) -> (local file path, commit)."""
    if copy is not None:
        path = Path(copy) / relpath
        if not path.exists():
            raise PresetError(
                f"{component}: {source.rstrip('/')}/{relpath} not found (staged folder {source!r})"
            )
        return str(path), None
    if is_local_source(source):
        path = Path(source).expanduser() / relpath
        if not path.exists():
            raise PresetError(f"{component}: {path} not found (source folder {source!r})")
        return str(path), None
    from huggingface_hub import hf_hub_download

    try:
        local = hf_hub_download(source, relpath, revision=revision)
    except Exception as err:  # offline + uncached, gated repo, typo, no network: all end here
        offline = os.environ.get("HF_HUB_OFFLINE", "0")
        raise PresetError(
            f"{component}: cannot get {relpath!r} from hub repo {source!r} (revision {revision or 'main'}, "
            f"HF_HUB_OFFLINE={offline}): {type(err).__name__}: {str(err).splitlines()[0][:200]}. "
            "(No local folder of that name either.) Pass a local folder with the hub layout via paths=, "
            "or go online, accept the model licence and log in."
        ) from err
    parts = Path(local).parts
    commit = parts[parts.index("snapshots") + 1] if "snapshots" in parts else None
    return local, commit


def _pick_variant(source: str, subfolder: str, variant: str | None) -> str | None:
    """Local folders may hold only plain weight files (e.g. tiny, or an fp32 copy): use those."""
    if variant is None or not is_local_source(source):
        return variant
    folder = Path(source).expanduser() / subfolder
    return variant if any(f".{variant}." in p.name for p in folder.iterdir()) else None


def required_files(config: PresetConfig) -> dict[str, tuple[str, str, str | None]]:
    """component -> (source, file that must exist under it, revision): what the loader checks first."""
    pr, dr = config.prior_revision, config.decoder_revision
    return {
        "prior": (config.prior, f"{config.prior_subfolder}/config.json", pr),
        "text_encoder": (config.prior, "text_encoder/config.json", pr),
        "tokenizer": (config.prior, "tokenizer/tokenizer_config.json", pr),
        "image_encoder": (config.prior, "image_encoder/config.json", pr),
        "feature_extractor": (config.prior, "feature_extractor/preprocessor_config.json", pr),
        "decoder": (config.decoder, f"{config.decoder_subfolder}/config.json", dr),
        "decoder_text_encoder": (config.decoder, "text_encoder/config.json", dr),
        "decoder_tokenizer": (config.decoder, "tokenizer/tokenizer_config.json", dr),
        "vqgan": (config.decoder, "vqgan/config.json", dr),
        "effnet": (config.decoder, "effnet_encoder.safetensors", dr),
        "previewer": (config.decoder, "previewer.safetensors", dr),
    }


def _staged_copies(config: PresetConfig, cache_dir: Path | None, s3_options: dict | None) -> dict[str, str]:
    """s3:// source -> this node's local copy (downloaded once per node; see pipeline.models.cache)."""
    from pipeline.models.cache import ModelCacheError, is_s3_uri, local_copy

    copies = {}
    for component in ("prior", "decoder", "csd"):
        source = getattr(config, component)
        if is_s3_uri(source) and source not in copies:
            try:
                copies[source] = str(local_copy(source, cache_dir, s3_options))
            except ModelCacheError as error:
                raise PresetError(f"{component}: {error}") from None
    return copies


def load_models(
    config: PresetConfig,
    *,
    device: str | None = None,
    cache_dir: Path | None = None,
    s3_options: dict | None = None,
) -> Models:
    """The one loader for every preset: check all components, then load them."""
    import torch

    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    # 1. presence of every component first (fast, clear failure); s3:// sources are copied first
    copies = _staged_copies(config, cache_dir, s3_options)
    files, components = {}, {}
    for component, (source, relpath, revision) in required_files(config).items():
        files[component], commit = _locate(source, relpath, revision, component, copies.get(source))
        components[component] = {"source": source, "path": relpath, "revision": revision, "commit": commit}
    if config.csd:
        csd_path = Path(copies.get(config.csd, config.csd)).expanduser()
        if not csd_path.is_file():
            raise PresetError(f"csd: checkpoint file {csd_path} not found")
        source = config.csd if config.csd in copies else str(csd_path)
        components["csd"] = {"source": source, "size": csd_path.stat().st_size}
    config = config.model_copy(update={"components": components})
    # the loaders read the local copies; the returned config keeps the S3 URIs (metadata, no node paths)
    local = config.model_copy(
        update={
            key: copies[value]
            for key in ("prior", "decoder", "csd")
            if (value := getattr(config, key)) in copies
        }
    )

    # 2. load
    dtype = torch.float32
    if config.name == "stable-cascade":
        if device.type == "cuda":
            if not torch.cuda.is_bf16_supported():  # the prior is known to overflow in fp16
                raise PresetError(
                    f"stable-cascade needs bf16, which {torch.cuda.get_device_name(device)} does not support "
                    "(Ampere or newer: A100, L4, L40S, H100)"
                )
            dtype = torch.bfloat16
        else:
            log.warning("stable-cascade on %s runs in fp32: possible, but impractically slow", device)
    with quiet_progress_bars(config.name == "tiny"):  # tiny loads happen in every test and actor
        models = _load_components(local, files, device, dtype)
    models.config = config
    return models


@contextmanager
def quiet_progress_bars(quiet: bool = True):
    """Silence transformers' "Loading weights"/"Writing model shards" bars, then restore the setting."""
    from transformers.utils import logging as hf_logging

    was_enabled = hf_logging.is_progress_bar_enabled()
    if quiet:
        hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if quiet and was_enabled:
            hf_logging.enable_progress_bar()


def _load_components(config: PresetConfig, files: dict, device, dtype) -> Models:
    from diffusers import StableCascadeUNet
    from diffusers.pipelines.deprecated.wuerstchen import PaellaVQModel
    from transformers import CLIPTextModelWithProjection, CLIPTokenizer, CLIPVisionModelWithProjection
    from transformers.models.clip import CLIPImageProcessorPil

    from pipeline.rbmod.csd import load_csd_checkpoint
    from pipeline.rbmod.descriptor import clip_descriptor, csd_descriptor
    from pipeline.rbmod.effnet import load_effnet
    from pipeline.rbmod.previewer import load_previewer

    def frozen(model):  # dtype was set by from_pretrained
        return model.to(device).eval().requires_grad_(False)

    def unet(source, subfolder, revision):
        variant = _pick_variant(source, subfolder, config.variant)
        return StableCascadeUNet.from_pretrained(
            source,
            subfolder=subfolder,
            revision=revision,
            variant=variant,
            torch_dtype=dtype,
            use_safetensors=True,
        )

    def hf_model(cls, source, subfolder, revision):  # transformers: plain (fp32) files, cast on load
        return cls.from_pretrained(
            source, subfolder=subfolder, revision=revision, dtype=dtype, use_safetensors=True
        )

    def tokenizer(source, revision, component):
        tok = CLIPTokenizer.from_pretrained(source, subfolder="tokenizer", revision=revision)
        if len(tok) <= 2:  # an unresolved hub id silently yields an empty tokenizer
            raise PresetError(f"{component}: tokenizer from {source!r} is empty ({len(tok)} tokens)")
        return tok

    prior_src, pr = config.prior, config.prior_revision
    dec_src, dr = config.decoder, config.decoder_revision
    image_processor = CLIPImageProcessorPil.from_pretrained(
        prior_src, subfolder="feature_extractor", revision=pr
    )
    image_encoder = frozen(hf_model(CLIPVisionModelWithProjection, prior_src, "image_encoder", pr))
    effnet = load_effnet(files["effnet"]).to(device)
    previewer = load_previewer(files["previewer"]).to(device)
    clip_size = int(image_processor.crop_size["height"])
    clip_mean, clip_std = tuple(image_processor.image_mean), tuple(image_processor.image_std)
    if config.csd:
        descriptor = csd_descriptor(load_csd_checkpoint(config.csd)).to(device)
    else:
        log.warning("no CSD weights configured: SOC uses the CLIP image-embedding fallback descriptor")
        descriptor = clip_descriptor(image_encoder, clip_size, clip_mean, clip_std).to(device)
    return Models(
        preset=config.name,
        device=device,
        dtype=dtype,
        prior=frozen(unet(prior_src, config.prior_subfolder, pr)),
        tokenizer=tokenizer(prior_src, pr, "tokenizer"),
        text_encoder=frozen(hf_model(CLIPTextModelWithProjection, prior_src, "text_encoder", pr)),
        image_encoder=image_encoder,
        clip_image_size=clip_size,
        clip_mean=clip_mean,
        clip_std=clip_std,
        effnet=effnet,
        previewer=previewer,
        descriptor=descriptor,
        decoder=frozen(unet(dec_src, config.decoder_subfolder, dr)),
        decoder_tokenizer=tokenizer(dec_src, dr, "decoder_tokenizer"),
        decoder_text_encoder=frozen(hf_model(CLIPTextModelWithProjection, dec_src, "text_encoder", dr)),
        vqgan=frozen(
            _check_stage_a_scale(
                PaellaVQModel.from_pretrained(
                    dec_src, subfolder="vqgan", revision=dr, torch_dtype=dtype, use_safetensors=True
                ),
                config,
            )
        ),
        config=config,
    )


def _check_stage_a_scale(vqgan, config: PresetConfig):
    """The decode uses `config.stage_a_scale_factor`, never the vqgan config's: say so when they differ."""
    loaded = float(vqgan.config.scale_factor)
    if abs(loaded - config.stage_a_scale_factor) > 1e-6:
        log.warning(
            "vqgan config of %r has scale_factor %g; decoding uses the preset's stage_a_scale_factor %g "
            "(the official StageA's value is %g)",
            config.decoder,
            loaded,
            config.stage_a_scale_factor,
            OFFICIAL_STAGE_A_SCALE,
        )
    return vqgan


# ----------------------------------------------------------------------------------------------------
# the tiny preset


def tiny_specs() -> dict:
    """Every tiny config in one JSON-able dict; its hash names the cache folder."""
    from pipeline.rbmod.effnet import EffNetConfig, StageSpec

    effnet = EffNetConfig(
        stem_channels=8,
        stages=(
            StageSpec(True, 1, 3, 1, 8, 8, 1),
            StageSpec(True, 2, 3, 2, 8, 8, 1),
            StageSpec(True, 2, 3, 2, 8, 16, 1),
            StageSpec(False, 2, 3, 2, 16, 16, 1),
            StageSpec(False, 2, 3, 1, 16, 24, 1),
            StageSpec(False, 2, 3, 2, 24, 32, 1),
        ),
        last_channels=32,
    )
    text = dict(
        hidden_size=32, intermediate_size=37, num_attention_heads=4, num_hidden_layers=2, projection_dim=32
    )
    vision = dict(text, image_size=32, patch_size=8)
    return {
        "format": TINY_FORMAT,
        "seed": TINY_SEED,
        "text_encoder": text,
        "image_encoder": vision,
        "prior": dict(
            in_channels=16,
            out_channels=16,
            conditioning_dim=32,
            block_out_channels=[32, 32],
            num_attention_heads=[2, 2],
            down_num_layers_per_block=[1, 1],
            up_num_layers_per_block=[1, 1],
            switch_level=[False],
            clip_text_in_channels=32,
            clip_text_pooled_in_channels=32,
            clip_image_in_channels=32,  # = the tiny image encoder's projection_dim
            dropout=[0.0, 0.0],
        ),
        "decoder": dict(
            in_channels=4,
            out_channels=4,
            patch_size=2,
            conditioning_dim=32,
            block_out_channels=[16, 32],
            num_attention_heads=[0, 2],
            down_num_layers_per_block=[1, 1],
            up_num_layers_per_block=[1, 1],
            down_blocks_repeat_mappers=[1, 1],
            up_blocks_repeat_mappers=[2, 2],
            block_types_per_layer=[
                ["SDCascadeResBlock", "SDCascadeTimestepBlock"],
                ["SDCascadeResBlock", "SDCascadeTimestepBlock", "SDCascadeAttnBlock"],
            ],
            clip_text_pooled_in_channels=32,
            effnet_in_channels=16,
            pixel_mapper_in_channels=3,
            timestep_conditioning_type=["sca"],
            switch_level=None,
            dropout=[0.0, 0.0],
        ),
        "vqgan": dict(
            levels=2,
            bottleneck_blocks=1,
            embed_dim=16,
            latent_channels=4,
            num_vq_embeddings=16,
            scale_factor=OFFICIAL_STAGE_A_SCALE,
        ),
        "effnet": effnet.to_dict(),
        "previewer": dict(c_in=16, c_hidden=32, c_out=3),
        "csd": dict(width=64, layers=2, patch=8, image_size=32, mlp_width=256, embed_dim=32),
        # geometry: 128^2 images <- 16x4x4 Stage C latents -> 4x32x32 Stage B latents -> Stage A (4x)
        "geometry": dict(
            image_size=128,
            stage_c_latent_size=4,
            reference_size=128,
            preview_size=32,
            stage_c_steps=4,
            stage_b_latent_scale=8.0,
            stage_b_steps=4,
        ),
    }


def tiny_key() -> str:
    import torch

    from manifests.tiny_tokenizer import vocabulary_key

    blob = json.dumps(
        {"specs": tiny_specs(), "torch": torch.__version__, "vocabulary": vocabulary_key()}, sort_keys=True
    )
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def tiny_preset_config(root: Path) -> PresetConfig:
    return PresetConfig(
        name="tiny",
        prior=str(root / "stable-cascade-prior"),
        decoder=str(root / "stable-cascade"),
        variant=None,
        csd=str(root / "csd" / "csd.safetensors"),
        **tiny_specs()["geometry"],
    )


def ensure_tiny_cache(cache_dir: Path | None = None) -> Path:
    """The tiny weights folder, built on first use. It is built in a private temp folder and renamed into
    place, so concurrent builders (Ray actors) never see a half-written folder; a loser drops its copy."""
    from pipeline.models.cache import default_cache_dir

    root = Path(cache_dir or default_cache_dir()).expanduser()
    final = root / f"tiny-{tiny_key()}"
    if final.is_dir():
        return final
    root.mkdir(parents=True, exist_ok=True)
    tmp = root / f".tmp-{final.name}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    try:
        with quiet_progress_bars():
            build_tiny(tmp)
        os.rename(tmp, final)
    except OSError:
        if not final.is_dir():
            raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return final


def _calibrate_batchnorm(module, inputs) -> None:
    """Set BatchNorm running statistics from one seeded batch, so the random tiny net's activations (and
    the encoder's latents) have roughly unit scale, like the trained ones. Computed in float64 and then
    rounded to float32, so thread count and CPU kind do not change a bit of the result."""
    import torch

    batchnorms = [m for m in module.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    for m in batchnorms:
        m.reset_running_stats()
        m.momentum = None  # cumulative average: one batch sets the stats exactly
    module.double().train()
    with torch.no_grad():
        module(inputs.double())
    for m in batchnorms:
        m.momentum = 0.1
    module.float().eval()


def build_tiny(root: Path) -> None:
    """Write the tiny preset (random, seeded weights) into `root` in the stable-cascade hub layout."""
    import torch
    from diffusers import StableCascadeUNet
    from diffusers.pipelines.deprecated.wuerstchen import PaellaVQModel
    from safetensors.torch import save_file
    from transformers import (
        CLIPTextConfig,
        CLIPTextModelWithProjection,
        CLIPVisionConfig,
        CLIPVisionModelWithProjection,
    )
    from transformers.models.clip import CLIPImageProcessorPil

    from manifests.tiny_tokenizer import save_tiny_clip_tokenizer
    from pipeline.rbmod.csd import CSD, vision_config_for
    from pipeline.rbmod.effnet import EfficientNetEncoder, EffNetConfig, save_effnet
    from pipeline.rbmod.image_ops import CLIP_MEAN, CLIP_STD, imagenet_normalize
    from pipeline.rbmod.previewer import Previewer, save_previewer

    specs = tiny_specs()
    prior_dir, decoder_dir = root / "stable-cascade-prior", root / "stable-cascade"
    for repo in (prior_dir, decoder_dir):
        tok = save_tiny_clip_tokenizer(repo / "tokenizer")
        shutil.rmtree(repo / "tokenizer" / "_bpe", ignore_errors=True)

    text_config = CLIPTextConfig(
        **specs["text_encoder"],
        vocab_size=len(tok),
        max_position_embeddings=tok.model_max_length,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
    )
    builders = [
        (
            lambda: CLIPTextModelWithProjection(text_config),
            [prior_dir / "text_encoder", decoder_dir / "text_encoder"],
        ),
        (
            lambda: CLIPVisionModelWithProjection(CLIPVisionConfig(**specs["image_encoder"])),
            [prior_dir / "image_encoder"],
        ),
        (lambda: StableCascadeUNet(**specs["prior"]), [prior_dir / "prior"]),
        (lambda: StableCascadeUNet(**specs["decoder"]), [decoder_dir / "decoder"]),
        (lambda: PaellaVQModel(**specs["vqgan"]), [decoder_dir / "vqgan"]),
    ]
    for offset, (build, targets) in enumerate(builders):
        with torch.random.fork_rng(devices=[]):  # seeded, without touching the caller's RNG
            torch.manual_seed(TINY_SEED + offset)
            model = build()
        for target in targets:
            model.save_pretrained(str(target), safe_serialization=True)

    size = specs["image_encoder"]["image_size"]
    CLIPImageProcessorPil(
        size={"shortest_edge": size},
        crop_size={"height": size, "width": size},
        image_mean=list(CLIP_MEAN),
        image_std=list(CLIP_STD),
    ).save_pretrained(str(prior_dir / "feature_extractor"))

    geometry = specs["geometry"]
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(TINY_SEED + 100)
        effnet = EfficientNetEncoder(EffNetConfig.from_dict(specs["effnet"]))
        side = geometry["reference_size"]
        _calibrate_batchnorm(effnet, imagenet_normalize(torch.rand(8, 3, side, side)))
        save_effnet(effnet, decoder_dir / "effnet_encoder.safetensors")

        torch.manual_seed(TINY_SEED + 101)
        previewer = Previewer(**specs["previewer"])
        latent = geometry["stage_c_latent_size"]
        _calibrate_batchnorm(previewer, torch.randn(8, 16, latent, latent))
        with torch.no_grad():  # previews roughly in [0,1] like the real Previewer's: mean 0.5, std ~0.2
            previewer.blocks[24].weight.mul_(0.3)
            previewer.blocks[24].bias.fill_(0.5)
        save_previewer(previewer, decoder_dir / "previewer.safetensors")

        torch.manual_seed(TINY_SEED + 102)
        c = specs["csd"]
        csd = CSD(
            vision_config_for(c["width"], c["layers"], c["patch"], c["image_size"], c["mlp_width"]),
            c["embed_dim"],
        )
        with torch.no_grad():
            for head in (csd.last_layer_style, csd.last_layer_content):
                head.normal_(std=c["width"] ** -0.5)  # CLIP initializes `proj` this way
        (root / "csd").mkdir(parents=True, exist_ok=True)
        save_file(
            {k: v.contiguous() for k, v in csd.state_dict().items()}, str(root / "csd" / "csd.safetensors")
        )
    (root / "tiny_specs.json").write_text(json.dumps(specs, indent=1))
