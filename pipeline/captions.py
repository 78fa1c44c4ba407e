"""Captions: each sample's `{uid}.txt` member, the prompt or a template over the row's fields.

A template is a Python format string over the plan row: `{prompt}`, `{style}`, `{content}`, `{id}`,
`{seed}`, `{uid}`, `{row}` and the manifest's extra columns as `{extra.NAME}`, e.g.
`"{prompt}, in the style of {extra.artist}"`. A null value renders as an empty string. The names are
checked twice: the fixed fields when the config loads, the extras once the manifest is read (both errors
name the unknown field and list the known ones). Fields are looked up by name only, never as Python
attributes (`{extra.__class__}` is the manifest column of that name, or an unknown field), and a format
spec may not ask for more than MAX_SPEC_WIDTH characters. A row whose caption cannot be rendered (a
format spec that does not fit its value) or comes out over MAX_CAPTION_CHARS fails that row, not the run.
"""

from __future__ import annotations

import re
import string
from collections.abc import Iterable, Mapping
from typing import Any

from manifests.row_settings import ROW_SETTING_COLUMNS
from manifests.schema import CANONICAL_COLUMNS, QUOTA_COLUMNS, SHARD_ID

DEFAULT_TEMPLATE = "{prompt}"
EXTRA = "extra"
MAX_SPEC_WIDTH = 256  # `{prompt:>99999999}` would write a 100 MB caption
MAX_CAPTION_CHARS = 65536


class CaptionError(ValueError):
    """A caption template that cannot work; the message names the field."""


def template_fields(template: str) -> list[str]:
    """The field names a template uses ("prompt", "extra.artist", ...), refusing bad syntax."""
    if not isinstance(template, str) or not template.strip():
        raise CaptionError("caption.template must be a non-empty string, e.g. '{prompt}'")
    try:
        parsed = list(string.Formatter().parse(template))
    except ValueError as error:
        raise CaptionError(f"caption.template {template!r} is not a valid format string: {error}") from None
    fields = []
    for _, name, spec, _ in parsed:
        if name is None:
            continue
        if name == "" or name[0].isdigit():
            raise CaptionError(f"caption.template {template!r}: name every field, e.g. {{prompt}}")
        if "[" in name:
            raise CaptionError(f"caption.template {template!r}: write {{extra.NAME}}, not {{{name}}}")
        if spec and "{" in spec:
            raise CaptionError(
                f"caption.template {template!r}: nested fields in a format spec are not supported"
            )
        if any(int(number) > MAX_SPEC_WIDTH for number in re.findall(r"\d+", spec or "")):
            raise CaptionError(
                f"caption.template {template!r}: the format spec {spec!r} of {{{name}}} asks for more than "
                f"{MAX_SPEC_WIDTH} characters"
            )
        fields.append(name)
    return fields


def check_template(template: str, extras: Iterable[str] | None = None) -> str:
    """Refuse unknown fields. `extras`: the manifest's extra column names (None: not known yet)."""
    known_extras = None if extras is None else sorted(extras)
    for name in template_fields(template):
        root, _, attribute = name.partition(".")
        if root == EXTRA:
            if not attribute or "." in attribute:
                raise CaptionError(f"caption.template: field {{{name}}} must be {{extra.NAME}}")
            if known_extras is not None and attribute not in known_extras:
                raise CaptionError(
                    f"caption.template: unknown field {{{name}}}: the manifest has no extra column "
                    f"{attribute!r} (its extras: {', '.join(known_extras) or 'none'})"
                )
        elif root not in CANONICAL_COLUMNS or attribute:
            raise CaptionError(
                f"caption.template: unknown field {{{name}}}; use one of "
                + ", ".join(f"{{{c}}}" for c in CANONICAL_COLUMNS)
                + " or {extra.NAME} for a manifest extra column"
            )
    return template


def extra_columns(names: Iterable[str]) -> list[str]:
    """The extra (user) columns among a plan's or manifest's column names (not the per-row settings,
    which the sample json and parquet carry as their own fields)."""
    return [
        name
        for name in names
        if name not in CANONICAL_COLUMNS + QUOTA_COLUMNS + ROW_SETTING_COLUMNS and name != SHARD_ID
    ]


class _Fields(string.Formatter):
    """Looks `{name}` and `{extra.NAME}` up in the row by name: never an attribute of a Python object."""

    def get_field(self, field_name: str, args, kwargs) -> tuple[Any, str]:
        root, _, attribute = field_name.partition(".")
        return (kwargs[EXTRA][attribute] if root == EXTRA else kwargs[root]), field_name


def render_caption(template: str, row: Mapping[str, Any]) -> str:
    """The caption of one plan row (ValueError/KeyError/... if the row's values do not fit the template,
    or the caption is over MAX_CAPTION_CHARS)."""
    values = {name: _value(row.get(name)) for name in CANONICAL_COLUMNS}
    extras = {name: _value(row[name]) for name in extra_columns(row)}
    caption = _Fields().vformat(template, (), {**values, EXTRA: extras})
    if len(caption) > MAX_CAPTION_CHARS:
        raise ValueError(
            f"the caption is {len(caption):,} characters, over the limit of {MAX_CAPTION_CHARS:,}"
        )
    return caption


def _value(value: Any) -> Any:
    return "" if value is None else value
