"""CSD style descriptor (Somepalli et al. 2024): a fine-tuned CLIP ViT-L/14 vision tower with two heads.

`forward(pixel_values)` -> (feature, content, style): feature = post-LN CLS token (1024-d for ViT-L),
content/style = L2-normalized `feature @ last_layer_content/style` (raw (1024,768) matrices).

The tower is transformers' `CLIPVisionModel` built offline from a config inferred from the checkpoint's
tensor shapes (OpenAI CLIP convention: heads = width / 64). `load_csd_checkpoint` reads the official
`.pth` (OpenAI-CLIP key names under `model_state_dict`, `module.` prefix) or a safetensors file (in
either naming; ours is `backbone.<CLIPVisionModel keys>`, `last_layer_style`, `last_layer_content`),
always strictly.
"""

from __future__ import annotations

import re
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from transformers import CLIPVisionConfig, CLIPVisionModel

from pipeline.rbmod import load_strict

HEAD_WIDTH = 64  # OpenAI CLIP ViTs use 64-wide attention heads


class CSD(nn.Module):
    def __init__(self, vision_config: CLIPVisionConfig, embed_dim: int = 768):
        super().__init__()
        self.backbone = CLIPVisionModel(vision_config)
        width = vision_config.hidden_size
        self.last_layer_style = nn.Parameter(torch.zeros(width, embed_dim))
        self.last_layer_content = nn.Parameter(torch.zeros(width, embed_dim))

    @property
    def image_size(self) -> int:
        return self.backbone.config.image_size

    @property
    def embed_dim(self) -> int:
        return self.last_layer_style.shape[1]

    def forward(self, pixel_values: torch.Tensor):
        feature = self.backbone(pixel_values=pixel_values).pooler_output
        content = F.normalize(feature @ self.last_layer_content, dim=1)
        style = F.normalize(feature @ self.last_layer_style, dim=1)
        return feature, content, style


def vision_config_for(
    width: int, layers: int, patch: int, image_size: int, mlp_width: int
) -> CLIPVisionConfig:
    return CLIPVisionConfig(
        hidden_size=width,
        intermediate_size=mlp_width,
        num_hidden_layers=layers,
        num_attention_heads=max(1, width // HEAD_WIDTH),
        image_size=image_size,
        patch_size=patch,
        hidden_act="quick_gelu",  # OpenAI CLIP's activation
        layer_norm_eps=1e-5,
    )


def infer_config(state_dict: dict[str, torch.Tensor]) -> tuple[CLIPVisionConfig, int]:
    """(vision config, head dim) from a state dict in this module's naming."""
    patch_weight = state_dict["backbone.embeddings.patch_embedding.weight"]
    width, patch = patch_weight.shape[0], patch_weight.shape[-1]
    positions = state_dict["backbone.embeddings.position_embedding.weight"].shape[0]
    grid = round((positions - 1) ** 0.5)
    layer_ids = {
        int(m.group(1)) for k in state_dict if (m := re.match(r"backbone\.encoder\.layers\.(\d+)\.", k))
    }
    mlp_width = state_dict["backbone.encoder.layers.0.mlp.fc1.weight"].shape[0]
    config = vision_config_for(width, len(layer_ids), patch, grid * patch, mlp_width)
    return config, state_dict["last_layer_style"].shape[1]


def official_to_ours(official: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rename an OpenAI-CLIP-named CSD state dict (prefix `module.` already stripped) to ours."""
    ours: dict[str, torch.Tensor] = {}
    renames = {
        "backbone.class_embedding": "backbone.embeddings.class_embedding",
        "backbone.positional_embedding": "backbone.embeddings.position_embedding.weight",
        "backbone.conv1.weight": "backbone.embeddings.patch_embedding.weight",
        "backbone.ln_pre.weight": "backbone.pre_layrnorm.weight",
        "backbone.ln_pre.bias": "backbone.pre_layrnorm.bias",
        "backbone.ln_post.weight": "backbone.post_layernorm.weight",
        "backbone.ln_post.bias": "backbone.post_layernorm.bias",
        "last_layer_style": "last_layer_style",
        "last_layer_content": "last_layer_content",
    }
    block_renames = {
        "attn.out_proj": "self_attn.out_proj",
        "ln_1": "layer_norm1",
        "ln_2": "layer_norm2",
        "mlp.c_fc": "mlp.fc1",
        "mlp.c_proj": "mlp.fc2",
    }
    for key, tensor in official.items():
        if key in renames:
            ours[renames[key]] = tensor
            continue
        match = re.match(r"backbone\.transformer\.resblocks\.(\d+)\.(.+)\.(weight|bias)$", key)
        in_proj = re.match(r"backbone\.transformer\.resblocks\.(\d+)\.attn\.in_proj_(weight|bias)$", key)
        if in_proj:  # nn.MultiheadAttention stacks the q, k, v projections in that order
            prefix = f"backbone.encoder.layers.{in_proj.group(1)}.self_attn"
            for proj, part in zip(("q_proj", "k_proj", "v_proj"), tensor.chunk(3, dim=0), strict=True):
                ours[f"{prefix}.{proj}.{in_proj.group(2)}"] = part.clone()
        elif match and match.group(2) in block_renames:
            layer, name, kind = match.groups()
            ours[f"backbone.encoder.layers.{layer}.{block_renames[name]}.{kind}"] = tensor
        else:
            ours[key] = tensor  # left as is, so the strict load names it as unexpected
    return ours


def _read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """Either file format, either naming (official OpenAI-CLIP names are converted) -> our naming."""
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        state = load_file(str(path))
    else:
        state = _read_pth(path)
    state = {k.removeprefix("module."): v for k, v in state.items()}
    if any(k.startswith(("backbone.conv1.", "backbone.transformer.")) for k in state):
        state = official_to_ours(state)
    return state


def _read_pth(path: Path) -> dict[str, torch.Tensor]:
    try:  # never unpickle arbitrary objects from a downloaded file
        checkpoint = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as err:
        raise ValueError(
            f"CSD checkpoint {path}: torch.load(weights_only=True) refused it "
            f"({type(err).__name__}: {str(err).splitlines()[0][:200]}); "
            "re-save its model_state_dict as a safetensors file and point to that"
        ) from err
    state = checkpoint.get("model_state_dict", checkpoint) if isinstance(checkpoint, dict) else None
    if not isinstance(state, dict):
        raise ValueError(
            f"CSD checkpoint {path}: expected a dict with 'model_state_dict', got {type(checkpoint)}"
        )
    return state


def load_csd_checkpoint(path: str | Path) -> CSD:
    """Build CSD from a checkpoint (official .pth or our safetensors), strict, fp32, eval, frozen."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"CSD checkpoint not found: {path}")
    state = _read_state_dict(path)
    required = ("backbone.embeddings.patch_embedding.weight", "backbone.embeddings.position_embedding.weight")
    missing = [k for k in (*required, "last_layer_style") if k not in state]
    if missing:
        raise ValueError(f"CSD checkpoint {path}: not a CSD state dict, missing {missing}")
    config, embed_dim = infer_config(state)
    model = CSD(config, embed_dim)
    load_strict(model, state, f"CSD checkpoint {path}")
    return model.float().eval().requires_grad_(False)
