"""The one loader for every preset: `load_preset` (by name) and `load_models` (from a `PresetConfig`).
The real stable-cascade weights and the tiny random ones go through exactly this code path.

Any source may be a hub id, a local folder with the hub layout, or an `s3://bucket/prefix/` folder (or,
for CSD, one file) as written by `stylegen models stage`: it is copied once per node into the model
cache (pipeline.models.cache) and loaded from there; recorded metadata keeps the S3 URI.

Every component is checked for presence before anything heavy loads, so a missing folder or an
uncached hub id fails in well under a second with a message naming the component and the path.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from pipeline.models.presets import (
    OFFICIAL_STAGE_A_SCALE,
    PATH_KEYS,
    PRESET_NAMES,
    Models,
    PresetConfig,
    PresetError,
    is_local_source,
    required_files,
)
from pipeline.models.progress_bars import quiet_progress_bars
from pipeline.models.tiny import ensure_tiny_cache, tiny_preset_config

log = logging.getLogger(__name__)


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
