"""Scoring and filtering of generated samples.

- `models`: `ScoringConfig`, the `tiny`/`real` scoring presets, and the once-per-process model loader.
- `scorer`: `Scorer`, which computes clip_t, clip_content, dino_style, csd_style and leakage per sample.
- `rules`: `FilterRules`, the safe parser/evaluator for filter rules such as `clip_t >= 0.25`.
- `select_plan`: the pure selection used by `stylegen select` (top fraction / minimum, per group).

This package file stays light: importing it pulls in neither torch nor transformers.
"""
