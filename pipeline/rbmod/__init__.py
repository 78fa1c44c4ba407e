"""RB-Modulation on Stable Cascade (spec: ../shared/research/rbmod_spec.md).

Modules: `effnet` (EfficientNet encoder), `previewer`, `csd`, `descriptor` (style descriptor for SOC),
`decode` (Stage B + A), `image_ops` (torch-only preprocessing); the presets live in `pipeline.models.presets`.
This file stays light (no torch import at module level): it holds only the strict-loading helper.
"""

from __future__ import annotations

MAX_KEYS_SHOWN = 8


def load_strict(module, state_dict: dict, source: str) -> None:
    """`module.load_state_dict(state_dict)` that accepts nothing less and nothing more than an exact key
    match (and shapes; BatchNorm's `num_batches_tracked` may be absent), with an error naming `source`
    and the offending keys."""
    expected = set(module.state_dict())
    given = set(state_dict)
    missing, unexpected = sorted(expected - given), sorted(given - expected)
    # As torch's own strict load does for a file without version metadata: a BatchNorm counter the file
    # lacks is filled in (unused in eval), so checkpoints saved without it still load.
    missing = [key for key in missing if not key.endswith(".num_batches_tracked")]
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing keys (e.g. {missing[:MAX_KEYS_SHOWN]})")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected keys (e.g. {unexpected[:MAX_KEYS_SHOWN]})")
        raise ValueError(f"{source}: state dict does not match {type(module).__name__}: " + "; ".join(parts))
    try:
        module.load_state_dict(state_dict, strict=True)
    except RuntimeError as err:  # shape mismatches
        raise ValueError(f"{source}: {err}") from err
