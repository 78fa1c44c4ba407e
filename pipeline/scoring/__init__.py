"""Scoring and filtering of generated samples.

- `models`: `ScoringConfig`, the `tiny`/`real` scoring presets, and the once-per-process model loader.
- `registry`: the scorer interface (`ScoreModule`), the built-ins by name and the `stylegen.scorers`
  entry-point group for third-party scorers.
- `scorer`: `Scorer`, which runs the configured scorers over batches, sharing embeddings between them.
- `builtins`: clip, dino, csd, leakage, aesthetic, nsfw and the dino/clip embedding scorers;
  `aesthetic`: the LAION aesthetic head.
- `duplicates`: exact near-duplicate groups over stored embeddings (`stylegen dedup`).
- `rules`: `FilterRules`, the safe parser/evaluator for filter rules such as `clip_t >= 0.25`.
- `select_plan`: the pure selection used by `stylegen select` (top fraction / minimum, per group).

This package file stays light: importing it pulls in neither torch nor transformers.
"""
