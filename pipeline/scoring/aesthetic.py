"""The LAION improved aesthetic predictor's head: an MLP on L2-normalised CLIP ViT-L/14 image embeddings.

The published checkpoint (`sac+logos+ava1-l14-linearMSE.pth`, trained on SAC + LAION-logos + AVA with an
MSE loss) is a plain torch state dict of

    layers = Sequential(Linear(768, 1024), Dropout, Linear(1024, 128), Dropout, Linear(128, 64), Dropout,
                        Linear(64, 16), Linear(16, 1))

(no activations between the linears: that is how it was trained), so its keys are
`layers.{0,2,4,6,7}.{weight,bias}`. `AestheticMLP` has exactly that layout, with the widths read from the
state dict, so the real file and the tiny twin load through the same code, by key name, strictly. The
output is the predicted mean rating on AVA's 1-10 scale (about 4-7 for typical web images).
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

LINEAR_KEYS = (0, 2, 4, 6, 7)  # Sequential positions of the linears; the others are dropouts


class AestheticMLP(nn.Module):
    def __init__(self, widths: tuple[int, ...]):
        """`widths`: input, then the four hidden widths (768, 1024, 128, 64, 16 for the real head)."""
        super().__init__()
        if len(widths) != len(LINEAR_KEYS):
            raise ValueError(f"the aesthetic MLP takes {len(LINEAR_KEYS)} widths, got {widths}")
        a, b, c, d, e = widths
        layers = [nn.Linear(a, b), nn.Dropout(0.2), nn.Linear(b, c), nn.Dropout(0.2), nn.Linear(c, d)]
        layers += [nn.Dropout(0.1), nn.Linear(d, e), nn.Linear(e, 1)]
        self.layers = nn.Sequential(*layers)

    @property
    def input_dim(self) -> int:
        return self.layers[0].in_features

    def forward(self, embeddings: torch.Tensor) -> torch.Tensor:
        """(B, input_dim) normalised embeddings -> (B,) scores."""
        return self.layers(embeddings).squeeze(-1)

    @classmethod
    def from_state_dict(cls, state: dict[str, torch.Tensor], where: str = "the state dict") -> AestheticMLP:
        expected = {f"layers.{i}.{part}" for i in LINEAR_KEYS for part in ("weight", "bias")}
        missing, unexpected = sorted(expected - set(state)), sorted(set(state) - expected)
        if missing or unexpected:
            raise ValueError(
                f"{where} is not an improved-aesthetic-predictor head: missing keys {missing}, "
                f"unexpected keys {unexpected}"
            )
        widths = (
            state["layers.0.weight"].shape[1],
            *(state[f"layers.{i}.weight"].shape[0] for i in LINEAR_KEYS[:-1]),
        )
        model = cls(tuple(int(w) for w in widths))
        try:
            model.load_state_dict({key: value.float() for key, value in state.items()}, strict=True)
        except RuntimeError as error:  # shape mismatches between consecutive layers
            raise ValueError(f"{where}: {error}") from None
        return model.eval().requires_grad_(False)


def load_aesthetic_mlp(source: str, filename: str) -> AestheticMLP:
    """Load the head from a local state-dict file (`.pth`/`.pt`/`.bin` read with weights_only=True, or
    `.safetensors`), a local folder holding `filename`, or a hub repo id holding `filename`."""
    path = Path(source).expanduser()
    if path.is_dir():
        path = path / filename
    elif not path.is_file():
        path = _download(source, filename)
    if not path.is_file():
        raise ValueError(f"cannot load the aesthetic head: {path} does not exist")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(path))
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)  # never unpickles code
    except Exception as error:
        raise ValueError(f"cannot load the aesthetic head from {path}: {error}") from error
    if not isinstance(state, dict):
        raise ValueError(f"{path} holds a {type(state).__name__}, not a state dict")
    return AestheticMLP.from_state_dict(state, str(path))


def _download(repo_id: str, filename: str) -> Path:
    from huggingface_hub import hf_hub_download

    try:
        return Path(hf_hub_download(repo_id, filename))
    except Exception as error:  # offline + uncached, a typo, no network: all end here
        raise ValueError(
            f"cannot load the aesthetic head {filename!r} from {repo_id!r} (not a local file or folder, "
            f"and the hub gave: {type(error).__name__}: {error})"
        ) from None
