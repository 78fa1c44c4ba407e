"""Stable Cascade's EfficientNet encoder: image -> 16-channel Stage C latent (stride 32).

The backbone is the EfficientNetV2-S feature extractor, written here (no torchvision) with the module
layout torchvision uses, so `effnet_encoder.safetensors` from the stable-cascade repo loads strictly:
`backbone.0` stem, `backbone.1..6` stages of (Fused)MBConv blocks, `backbone.7` the 1x1 conv to
`last_channels`. Then `mapper` = Conv1x1(last_channels -> 16, no bias) -> BatchNorm2d(16, affine=False).
Widths and depths come from `EffNetConfig`, so the tiny preset uses this same class and key pattern.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from torch import nn

from pipeline.rbmod import load_strict

BN_EPS = 1e-3  # torchvision builds efficientnet_v2 with BatchNorm2d(eps=1e-3)


@dataclass(frozen=True)
class StageSpec:
    fused: bool  # FusedMBConv (one full conv does expand + spatial) or MBConv (1x1 expand, depthwise, SE)
    expand_ratio: int
    kernel: int
    stride: int  # of the stage's first block; later blocks use stride 1
    in_channels: int
    out_channels: int
    layers: int


# EfficientNetV2-S (Tan & Le 2021, Table 4), as torchvision's `efficientnet_v2_s().features` lays it out.
V2S_STAGES = (
    StageSpec(True, 1, 3, 1, 24, 24, 2),
    StageSpec(True, 4, 3, 2, 24, 48, 4),
    StageSpec(True, 4, 3, 2, 48, 64, 4),
    StageSpec(False, 4, 3, 2, 64, 128, 6),
    StageSpec(False, 6, 3, 1, 128, 160, 9),
    StageSpec(False, 6, 3, 2, 160, 256, 15),
)


@dataclass(frozen=True)
class EffNetConfig:
    stem_channels: int = 24
    stages: tuple[StageSpec, ...] = V2S_STAGES
    last_channels: int = 1280
    latent_channels: int = 16

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> EffNetConfig:
        stages = tuple(StageSpec(**s) for s in data["stages"])
        return cls(**{**data, "stages": stages})


def conv_bn_act(c_in: int, c_out: int, kernel: int, stride: int = 1, groups: int = 1, act: bool = True):
    """torchvision's Conv2dNormActivation layout: `.0` conv (no bias), `.1` BatchNorm, `.2` SiLU."""
    layers = [
        nn.Conv2d(c_in, c_out, kernel, stride, padding=(kernel - 1) // 2, groups=groups, bias=False),
        nn.BatchNorm2d(c_out, eps=BN_EPS),
    ]
    if act:
        layers.append(nn.SiLU(inplace=True))
    return nn.Sequential(*layers)


class SqueezeExcitation(nn.Module):
    def __init__(self, channels: int, squeeze_channels: int):
        super().__init__()
        self.fc1 = nn.Conv2d(channels, squeeze_channels, 1)
        self.fc2 = nn.Conv2d(squeeze_channels, channels, 1)

    def forward(self, x):
        scale = x.mean(dim=(2, 3), keepdim=True)
        scale = torch.sigmoid(self.fc2(nn.functional.silu(self.fc1(scale))))
        return x * scale


class MBConv(nn.Module):
    """1x1 expand (skipped when ratio 1) -> depthwise kxk -> SE -> 1x1 project; residual when shapes allow."""

    def __init__(self, c_in: int, c_out: int, expand_ratio: int, kernel: int, stride: int):
        super().__init__()
        expanded = c_in * expand_ratio
        layers = []
        if expanded != c_in:
            layers.append(conv_bn_act(c_in, expanded, 1))
        layers.append(conv_bn_act(expanded, expanded, kernel, stride, groups=expanded))
        layers.append(SqueezeExcitation(expanded, max(1, c_in // 4)))
        layers.append(conv_bn_act(expanded, c_out, 1, act=False))
        self.block = nn.Sequential(*layers)
        self.use_residual = stride == 1 and c_in == c_out

    def forward(self, x):
        # Stochastic depth is identity at eval, and this encoder only runs in eval.
        out = self.block(x)
        return out + x if self.use_residual else out


class FusedMBConv(nn.Module):
    """kxk expand conv (or the whole block when ratio 1) -> 1x1 project; residual when shapes allow."""

    def __init__(self, c_in: int, c_out: int, expand_ratio: int, kernel: int, stride: int):
        super().__init__()
        expanded = c_in * expand_ratio
        if expanded != c_in:
            layers = [conv_bn_act(c_in, expanded, kernel, stride), conv_bn_act(expanded, c_out, 1, act=False)]
        else:
            layers = [conv_bn_act(c_in, c_out, kernel, stride)]
        self.block = nn.Sequential(*layers)
        self.use_residual = stride == 1 and c_in == c_out

    def forward(self, x):
        out = self.block(x)
        return out + x if self.use_residual else out


def build_backbone(config: EffNetConfig) -> nn.Sequential:
    modules = [conv_bn_act(3, config.stem_channels, 3, stride=2)]
    for stage in config.stages:
        block_cls = FusedMBConv if stage.fused else MBConv
        blocks = []
        for i in range(stage.layers):
            c_in = stage.in_channels if i == 0 else stage.out_channels
            stride = stage.stride if i == 0 else 1
            blocks.append(block_cls(c_in, stage.out_channels, stage.expand_ratio, stage.kernel, stride))
        modules.append(nn.Sequential(*blocks))
    modules.append(conv_bn_act(config.stages[-1].out_channels, config.last_channels, 1))
    return nn.Sequential(*modules)


class EfficientNetEncoder(nn.Module):
    """ImageNet-normalized image (B,3,H,W) -> latent (B,16,H/32,W/32). Always fp32, eval mode."""

    def __init__(self, config: EffNetConfig | None = None):
        super().__init__()
        self.config = config or EffNetConfig()
        self.backbone = build_backbone(self.config)
        self.mapper = nn.Sequential(
            nn.Conv2d(self.config.last_channels, self.config.latent_channels, 1, bias=False),
            nn.BatchNorm2d(self.config.latent_channels, affine=False),
        )

    def forward(self, x):
        return self.mapper(self.backbone(x))


CONFIG_METADATA_KEY = "stylegen.effnet_config"


def save_effnet(model: EfficientNetEncoder, path) -> None:
    """Write the state dict as safetensors; a non-default config travels in the file's metadata."""
    # one metadata entry only: safetensors writes the metadata map in no fixed order
    metadata = {"format": "pt"}
    if model.config != EffNetConfig():
        metadata = {CONFIG_METADATA_KEY: json.dumps(model.config.to_dict())}
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path), metadata=metadata)


def load_effnet(path) -> EfficientNetEncoder:
    """Strictly load `effnet_encoder.safetensors` (EfficientNetV2-S unless the file's metadata says
    otherwise) into an fp32, eval, frozen encoder."""
    with safe_open(str(path), framework="pt") as handle:
        metadata = handle.metadata() or {}
    config = EffNetConfig()
    if CONFIG_METADATA_KEY in metadata:
        config = EffNetConfig.from_dict(json.loads(metadata[CONFIG_METADATA_KEY]))
    model = EfficientNetEncoder(config)
    load_strict(model, load_file(str(path)), f"EfficientNet encoder {path}")
    return model.float().eval().requires_grad_(False)
