"""Stable Cascade's Previewer: Stage C latent (B,16,h,w) -> RGB preview (B,3,8h,8w), roughly in [0,1].

One `blocks` Sequential of 25 modules, the layout of `previewer.safetensors`: eight (layer, GELU,
BatchNorm) triples, then a 1x1 conv to RGB. Three stride-2 transposed convs upsample 8x. The hidden
width is configurable (`c_hidden`, then c_hidden/2 and c_hidden/4), so the tiny preset uses the same keys.
The output is not clamped (as in Stable Cascade); SOC differentiates through it.
"""

from __future__ import annotations

from safetensors.torch import load_file, save_file
from torch import nn

from pipeline.rbmod import load_strict


class Previewer(nn.Module):
    def __init__(self, c_in: int = 16, c_hidden: int = 512, c_out: int = 3):
        super().__init__()
        self.c_in, self.c_hidden, self.c_out = c_in, c_hidden, c_out
        half, quarter = c_hidden // 2, c_hidden // 4
        layers = [
            nn.Conv2d(c_in, c_hidden, kernel_size=1),
            nn.Conv2d(c_hidden, c_hidden, kernel_size=3, padding=1),
            nn.ConvTranspose2d(c_hidden, half, kernel_size=2, stride=2),
            nn.Conv2d(half, half, kernel_size=3, padding=1),
            nn.ConvTranspose2d(half, quarter, kernel_size=2, stride=2),
            nn.Conv2d(quarter, quarter, kernel_size=3, padding=1),
            nn.ConvTranspose2d(quarter, quarter, kernel_size=2, stride=2),
            nn.Conv2d(quarter, quarter, kernel_size=3, padding=1),
        ]
        modules = []
        for layer in layers:
            modules += [layer, nn.GELU(), nn.BatchNorm2d(layer.out_channels)]
        modules.append(nn.Conv2d(quarter, c_out, kernel_size=1))
        self.blocks = nn.Sequential(*modules)

    def config(self) -> dict:
        return {"c_in": self.c_in, "c_hidden": self.c_hidden, "c_out": self.c_out}

    def forward(self, x):
        return self.blocks(x)


def save_previewer(model: Previewer, path) -> None:
    save_file(
        {k: v.contiguous() for k, v in model.state_dict().items()}, str(path), metadata={"format": "pt"}
    )


def load_previewer(path) -> Previewer:
    """Strictly load `previewer.safetensors`; widths are read from the tensor shapes."""
    state = load_file(str(path))
    try:
        c_hidden, c_in = state["blocks.0.weight"].shape[:2]
        c_out = state["blocks.24.weight"].shape[0]
    except KeyError as err:
        raise ValueError(f"Previewer {path}: not a Previewer state dict (no {err.args[0]})") from None
    model = Previewer(c_in=c_in, c_hidden=c_hidden, c_out=c_out)
    load_strict(model, state, f"Previewer {path}")
    return model.float().eval().requires_grad_(False)
