"""Scoring presets and the once-per-process loaders of the scoring models.

Two presets share one loading path (`from_pretrained` through `AutoModel`, `AutoTokenizer`,
`AutoImageProcessor`, `AutoModelForImageClassification`; the aesthetic head's state dict by key name),
so the tiny preset exercises exactly the code the real one runs:

- `tiny`: random-weight CLIP (32 px, width 32), DINOv2 (32 px), aesthetic MLP (on the tiny CLIP's
  32-dim embedding) and ViT safety classifier (32 px, labels normal/nsfw) built from small configs with
  a fixed seed, written once into a cache folder, then loaded back by path.
- `real`: `openai/clip-vit-large-patch14` (the paper's CLIP-T / CLIP-I family), `facebook/dinov2-base`,
  the LAION improved aesthetic predictor `sac+logos+ava1-l14-linearMSE` (an MLP on normalised CLIP
  ViT-L/14 image embeddings; a torch state dict, `.pth`, keys `layers.{0,2,4,6,7}.{weight,bias}`; the
  hub copy `trl-lib/ddpo-aesthetic-predictor`, file `aesthetic-model.pth`; upstream
  github.com/christophschuhmann/improved-aesthetic-predictor, Apache-2.0) and the safety classifier
  `Falconsai/nsfw_image_detection` (ViT-B/16 fine-tuned on normal/nsfw, safetensors, Apache-2.0).
  Any hub id or local folder (or, for the aesthetic head, a local `.pth`/`.safetensors` file) can be
  configured instead through `scoring.options`.

On CUDA the models run in float16 by default (`dtype="auto"`); on CPU in float32.
"""

from __future__ import annotations

import os
import shutil
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from manifests.tiny_tokenizer import vocabulary_key
from pipeline.scoring.registry import DEFAULT_SCORERS

if TYPE_CHECKING:
    import torch

REAL_CLIP = "openai/clip-vit-large-patch14"
REAL_DINO = "facebook/dinov2-base"
REAL_AESTHETIC, AESTHETIC_FILE = "trl-lib/ddpo-aesthetic-predictor", "aesthetic-model.pth"
REAL_NSFW = "Falconsai/nsfw_image_detection"
TINY_FOLDER = f"tiny-scoring-v2-{vocabulary_key()}"  # bump v2 when the tiny configs change
DEFAULT_CACHE_DIR = Path(os.environ.get("STYLEGEN_CACHE_DIR", "~/.cache/stylegen")).expanduser()


class ScoringConfig(BaseModel):
    """What to score with and how to filter. Model fields take a hub id or a local folder."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    clip_model: str = REAL_CLIP
    dino_model: str = REAL_DINO
    batch_size: int = Field(32, ge=1, description="images per forward pass")
    dtype: Literal["auto", "float32", "float16", "bfloat16"] = "auto"
    reference_cache_size: int = Field(4096, ge=0, description="reference images whose embeddings are kept")
    scorers: tuple[str, ...] = Field(DEFAULT_SCORERS, description="scorer names, built-in or entry points")
    aesthetic_model: str = Field(REAL_AESTHETIC, description="hub id, local folder or state-dict file")
    aesthetic_file: str = Field(AESTHETIC_FILE, description="the state-dict file inside aesthetic_model")
    nsfw_model: str = Field(REAL_NSFW, description="an image-classification model: hub id or folder")
    nsfw_labels: tuple[str, ...] = Field(("nsfw",), description="labels whose probabilities sum to nsfw")
    scorer_options: dict[str, dict[str, Any]] = Field({}, description="options per third-party scorer")


PRESETS = ("tiny", "real", "stable-cascade")  # stable-cascade (the generation preset) scores with `real`


def scoring_preset(name: str, cache_dir: Path | str | None = None, **overrides: Any) -> ScoringConfig:
    """`tiny` (built into `cache_dir` on first use) or `real`; `overrides` replace config fields.

    The generation preset names are accepted too, so a run's `preset` can pick its scorers directly.
    """
    if name == "tiny":
        folder = build_tiny_scoring_models(Path(cache_dir or DEFAULT_CACHE_DIR) / TINY_FOLDER)
        fields = {
            "clip_model": str(folder / "clip"),
            "dino_model": str(folder / "dino"),
            "aesthetic_model": str(folder / "aesthetic"),
            "nsfw_model": str(folder / "nsfw"),
        }
    elif name in ("real", "stable-cascade"):
        fields = {"clip_model": REAL_CLIP, "dino_model": REAL_DINO}  # the other models' defaults are real
    else:
        raise ValueError(f"unknown scoring preset {name!r}; choose one of {', '.join(PRESETS)}")
    return ScoringConfig(**{**fields, **overrides})


def build_tiny_scoring_models(folder: Path) -> Path:
    """Write the tiny CLIP (+ tokenizer, processor), DINOv2 (+ processor), aesthetic head and safety
    classifier (+ processor) into `folder` once.

    The folder is built under a temporary name and renamed into place, so concurrent workers never see
    a half-written model (two racing builders produce identical files; the loser discards its copy).
    """
    folder = Path(folder)
    if folder.is_dir():
        return folder
    folder.parent.mkdir(parents=True, exist_ok=True)
    staging = folder.parent / f".{folder.name}.tmp-{uuid.uuid4().hex}"
    try:
        _write_tiny_models(staging)
        try:
            staging.rename(folder)
        except OSError:
            if not folder.is_dir():
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return folder


def _write_tiny_models(folder: Path) -> None:
    import torch
    from transformers import (
        BitImageProcessorPil,
        CLIPConfig,
        CLIPImageProcessorPil,
        CLIPModel,
        CLIPTextConfig,
        Dinov2Config,
        Dinov2Model,
    )

    from manifests.tiny_tokenizer import save_tiny_clip_tokenizer

    tokenizer = save_tiny_clip_tokenizer(folder / "clip")
    text_config = CLIPTextConfig(
        hidden_size=32,
        intermediate_size=37,
        num_attention_heads=4,
        num_hidden_layers=2,
        vocab_size=len(tokenizer),
        max_position_embeddings=77,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        projection_dim=32,
    )
    tiny_vit = dict(hidden_size=32, intermediate_size=37, num_hidden_layers=2, num_attention_heads=4)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)  # the same tiny weights on every machine
        vision_config = dict(**tiny_vit, image_size=32, patch_size=8, projection_dim=32)
        clip = CLIPModel(
            CLIPConfig(text_config=text_config.to_dict(), vision_config=vision_config, projection_dim=32)
        )
        dino = Dinov2Model(Dinov2Config(**tiny_vit, image_size=32, patch_size=8))
    clip.save_pretrained(folder / "clip")
    CLIPImageProcessorPil(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}).save_pretrained(
        folder / "clip"
    )
    dino.save_pretrained(folder / "dino")
    # Same recipe as facebook/dinov2-base (shortest edge 256, crop 224, ImageNet stats), scaled to 32 px.
    BitImageProcessorPil(
        size={"shortest_edge": 36},
        crop_size={"height": 32, "width": 32},
        image_mean=[0.485, 0.456, 0.406],
        image_std=[0.229, 0.224, 0.225],
    ).save_pretrained(folder / "dino")
    shutil.rmtree(folder / "clip" / "_bpe", ignore_errors=True)  # raw BPE files; tokenizer.json has them
    _write_tiny_safety_models(folder, projection_dim=32)


def _write_tiny_safety_models(folder: Path, projection_dim: int) -> None:
    """The aesthetic head (the real checkpoint's layout at small widths, saved as a `.pth` state dict like
    the real one) and a ViT normal/nsfw classifier saved like Falconsai/nsfw_image_detection."""
    import torch
    from transformers import ViTConfig, ViTForImageClassification, ViTImageProcessorPil

    from pipeline.scoring.aesthetic import AestheticMLP

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(1)
        head = AestheticMLP((projection_dim, 48, 16, 8, 4))
        for parameter in head.parameters():  # default init gives scores near 0; spread them out
            torch.nn.init.normal_(parameter, std=0.5)
        classifier = ViTForImageClassification(
            ViTConfig(
                hidden_size=32,
                intermediate_size=37,
                num_hidden_layers=2,
                num_attention_heads=4,
                image_size=32,
                patch_size=8,
                id2label={0: "normal", 1: "nsfw"},
                label2id={"normal": 0, "nsfw": 1},
            )
        )
    (folder / "aesthetic").mkdir(parents=True, exist_ok=True)
    torch.save(head.state_dict(), folder / "aesthetic" / AESTHETIC_FILE)
    classifier.save_pretrained(folder / "nsfw")
    # Same recipe as the real classifier (plain resize to the input size, mean = std = 0.5), at 32 px.
    ViTImageProcessorPil(
        size={"height": 32, "width": 32}, image_mean=[0.5] * 3, image_std=[0.5] * 3
    ).save_pretrained(folder / "nsfw")


@dataclass
class ScoringModels:
    """The loaded scoring models, on one device, in eval mode."""

    clip: Any  # CLIPModel (anything with get_image_features / get_text_features)
    clip_tokenizer: Any
    clip_processor: Any
    dino: Any  # Dinov2Model or another AutoModel whose last_hidden_state[:, 0] is the CLS token
    dino_processor: Any
    device: torch.device
    dtype: torch.dtype
    max_text_tokens: int


_LOADED: dict[tuple, ScoringModels] = {}


def resolve_device(device: Any = None) -> torch.device:
    import torch

    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def resolve_dtype(dtype: str, device: torch.device) -> torch.dtype:
    import torch

    if dtype == "auto":
        return torch.float16 if device.type == "cuda" else torch.float32
    return getattr(torch, dtype)


def load_scoring_models(config: ScoringConfig, device: Any = None) -> ScoringModels:
    """Load CLIP and DINO once per process (per ids, device and dtype); later calls reuse them."""
    device = resolve_device(device)
    dtype = resolve_dtype(config.dtype, device)
    key = (config.clip_model, config.dino_model, str(device), str(dtype))
    if key not in _LOADED:
        _LOADED[key] = _load(config.clip_model, config.dino_model, device, dtype)
    return _LOADED[key]


class LazyScoringModels:
    """ScoringModels loaded on the first attribute other than `device` and `dtype` is read."""

    def __init__(self, config: ScoringConfig, device: Any = None):
        self.config = config
        self.device = resolve_device(device)
        self.dtype = resolve_dtype(config.dtype, self.device)
        self._loaded: ScoringModels | None = None

    def __getattr__(self, name: str) -> Any:
        if name.startswith("_"):
            raise AttributeError(name)
        if self._loaded is None:
            self._loaded = load_scoring_models(self.config, self.device)
        return getattr(self._loaded, name)


def _load(clip_id: str, dino_id: str, device: torch.device, dtype: torch.dtype) -> ScoringModels:
    from transformers import AutoImageProcessor, AutoModel, AutoTokenizer

    clip = _from_pretrained(AutoModel, clip_id, "CLIP model", dtype=dtype)
    if not hasattr(clip, "get_image_features") or not hasattr(clip, "get_text_features"):
        raise ValueError(f"CLIP model {clip_id!r} ({type(clip).__name__}) has no get_image/text_features")
    tokenizer = _from_pretrained(AutoTokenizer, clip_id, "CLIP tokenizer")
    if len(tokenizer) <= 2:  # offline hub + uncached id gives an empty tokenizer instead of an error
        raise ValueError(f"CLIP tokenizer {clip_id!r} is empty ({len(tokenizer)} tokens); is the id cached?")
    dino = _from_pretrained(AutoModel, dino_id, "DINO model", dtype=dtype)
    return ScoringModels(
        clip=clip.to(device).eval().requires_grad_(False),
        clip_tokenizer=tokenizer,
        clip_processor=_from_pretrained(AutoImageProcessor, clip_id, "CLIP image processor", backend="pil"),
        dino=dino.to(device).eval().requires_grad_(False),
        dino_processor=_from_pretrained(AutoImageProcessor, dino_id, "DINO image processor", backend="pil"),
        device=device,
        dtype=dtype,
        max_text_tokens=clip.config.text_config.max_position_embeddings,
    )


def _from_pretrained(loader: Any, model_id: str, what: str, **kwargs: Any) -> Any:
    try:
        return loader.from_pretrained(model_id, **kwargs)
    except (OSError, ValueError) as error:
        raise ValueError(f"cannot load the {what} from {model_id!r}: {error}") from error


# --- the aesthetic head and the safety classifier (loaded only when their scorer is configured) -----

_HEADS: dict[tuple, Any] = {}


def load_aesthetic_head(config: ScoringConfig, device: torch.device) -> Any:
    """The aesthetic MLP on `device` in float32 (it is tiny), once per process per source."""
    from pipeline.scoring.aesthetic import load_aesthetic_mlp

    key = ("aesthetic", config.aesthetic_model, config.aesthetic_file, str(device))
    if key not in _HEADS:
        _HEADS[key] = load_aesthetic_mlp(config.aesthetic_model, config.aesthetic_file).to(device)
    return _HEADS[key]


def load_safety_classifier(config: ScoringConfig, device: torch.device, dtype: torch.dtype) -> tuple:
    """(classifier, image processor, label ids counted as unsafe), once per process per source."""
    from transformers import AutoImageProcessor, AutoModelForImageClassification

    key = ("nsfw", config.nsfw_model, config.nsfw_labels, str(device), str(dtype))
    if key not in _HEADS:
        model = _from_pretrained(
            AutoModelForImageClassification, config.nsfw_model, "nsfw classifier", dtype=dtype
        )
        labels = {str(name).lower(): int(index) for index, name in model.config.id2label.items()}
        wanted = [label.lower() for label in config.nsfw_labels]
        missing = [label for label in wanted if label not in labels]
        if missing or not wanted:
            raise ValueError(
                f"nsfw classifier {config.nsfw_model!r} has no label {missing or wanted}; "
                f"its labels: {sorted(labels)} (set scoring.options.nsfw_labels)"
            )
        processor = _from_pretrained(
            AutoImageProcessor, config.nsfw_model, "nsfw image processor", backend="pil"
        )
        _HEADS[key] = (
            model.to(device).eval().requires_grad_(False),
            processor,
            [labels[label] for label in wanted],
        )
    return _HEADS[key]
