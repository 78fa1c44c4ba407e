"""Filter rules: plain comparisons of a score with a number, joined by `and`; never `eval`.

A rule is a string such as `clip_t >= 0.25` or `dino_style <= 0.95 and leakage < 0.6`; a list of rules
means all of them. Each comparison names exactly one score and compares it with numbers using
< <= > >= == != (chains such as `0.2 <= clip_t < 0.9` are allowed). Numbers may be negative or in
scientific notation. The text is parsed with Python's `ast` and only Compare, BoolOp(And), Name and
numeric Constant nodes (with an optional leading minus or plus) are accepted; anything else (calls,
attributes, subscripts, `or`, `not`, strings, lambdas) is rejected at load with a message that names the
rule and the problem.

Evaluation, per sample:
- comparisons are checked in config order; the first one that fails rejects the sample, and the verdict
  names that comparison (as written) and the score value that failed it;
- a score that is None for this sample (clip_content in stylization mode, say) makes its comparisons
  not apply: they pass;
- a NaN score follows IEEE comparison, so it fails every comparison except `!=`.
"""

from __future__ import annotations

import ast
import math
import operator
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from pipeline.errors import UserError

OPERATORS = {
    ast.Lt: operator.lt,
    ast.LtE: operator.le,
    ast.Gt: operator.gt,
    ast.GtE: operator.ge,
    ast.Eq: operator.eq,
    ast.NotEq: operator.ne,
}
MAX_RULE_LENGTH = 1000


class RuleError(UserError, ValueError):
    """A filter rule that cannot be accepted; the message names the rule and what is wrong."""


@dataclass(frozen=True)
class Verdict:
    """`kept`, or `rejected` with the first failing comparison (as written) and the score's value."""

    status: str
    rule: str | None = None
    value: float | None = None
    score: str | None = None

    @property
    def reason(self) -> str | None:
        return None if self.status == "kept" else f"{self.rule} failed: {self.score}={self.value!r}"


KEPT = Verdict("kept")


@dataclass(frozen=True)
class Comparison:
    """One comparison such as `0.2 <= clip_t < 0.9`: a score name between numbers."""

    text: str
    score: str
    operands: tuple[str | float, ...]  # the score's name where the score goes, numbers elsewhere
    ops: tuple  # operator functions between consecutive operands

    def holds(self, value: float) -> bool:
        values = [value if isinstance(o, str) else o for o in self.operands]
        return all(op(a, b) for op, a, b in zip(self.ops, values[:-1], values[1:], strict=True))


class FilterRules:
    """Parsed rules; `evaluate(scores)` gives a `Verdict` for one sample."""

    def __init__(self, comparisons: list[Comparison]):
        self.comparisons = comparisons

    @classmethod
    def parse(cls, rules: str | Iterable[str], available: Iterable[str] | None) -> FilterRules:
        """Parse rules; `available` is the set of score names (None checks the syntax only)."""
        if isinstance(rules, str):
            rules = [rules]
        names = None if available is None else set(available)
        comparisons: list[Comparison] = []
        for index, rule in enumerate(rules):
            comparisons += _parse_rule(index, rule, names)
        return cls(comparisons)

    def evaluate(self, scores: Mapping[str, float | None]) -> Verdict:
        for comparison in self.comparisons:
            if comparison.score not in scores:
                raise KeyError(f"no score {comparison.score!r} given for rule {comparison.text!r}")
            value = scores[comparison.score]
            if value is not None and not comparison.holds(value):
                return Verdict("rejected", comparison.text, value, comparison.score)
        return KEPT

    @property
    def scores_used(self) -> set[str]:
        return {comparison.score for comparison in self.comparisons}

    def __len__(self) -> int:
        return len(self.comparisons)


def _parse_rule(index: int, rule: object, names: set[str] | None) -> list[Comparison]:
    where = f"filter rule {index + 1} {rule!r}"
    if not isinstance(rule, str):
        raise RuleError(f"{where}: a rule must be a string, got {type(rule).__name__}")
    if not rule.strip():
        raise RuleError(f"{where}: the rule is empty")
    if len(rule) > MAX_RULE_LENGTH:
        raise RuleError(f"{where}: longer than {MAX_RULE_LENGTH} characters")
    text = rule.strip()
    try:
        tree = ast.parse(text, mode="eval")
    except (SyntaxError, ValueError, RecursionError, MemoryError) as error:
        detail = getattr(error, "msg", None) or type(error).__name__
        raise RuleError(f"{where}: not a valid comparison ({detail})") from None
    try:
        parts = _and_parts(tree.body)
        return [_comparison(part, text, names) for part in parts]
    except RuleError as error:
        raise RuleError(f"{where}: {error}") from None


def _and_parts(node: ast.expr) -> list[ast.expr]:
    if isinstance(node, ast.BoolOp):
        if not isinstance(node.op, ast.And):
            raise RuleError("only 'and' may join comparisons ('or' is not allowed)")
        return [part for value in node.values for part in _and_parts(value)]
    return [node]


def _comparison(node: ast.expr, text: str, names: set[str] | None) -> Comparison:
    segment = ast.get_source_segment(text, node) or ast.unparse(node)
    if not isinstance(node, ast.Compare):
        raise RuleError(f"{segment!r} is not a comparison; {_describe(node)}")
    ops = []
    for op in node.ops:
        if type(op) not in OPERATORS:
            raise RuleError(
                f"operator {type(op).__name__} in {segment!r} is not allowed; use < <= > >= == !="
            )
        ops.append(OPERATORS[type(op)])
    operands: list[str | float] = []
    for operand in [node.left, *node.comparators]:
        if isinstance(operand, ast.Name):
            operands.append(operand.id)
        else:
            operands.append(_number(operand))
    score_names = [o for o in operands if isinstance(o, str)]
    if len(score_names) != 1:
        raise RuleError(f"{segment!r} must compare exactly one score with numbers, found {len(score_names)}")
    score = score_names[0]
    if names is not None and score not in names:
        from pipeline.suggest import did_you_mean

        hint = did_you_mean(score, names)
        raise RuleError(f"unknown score {score!r}{hint}; available: {', '.join(sorted(names))}")
    return Comparison(segment, score, tuple(operands), tuple(ops))


def _number(node: ast.expr) -> float:
    sign = 1.0
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.USub, ast.UAdd)):
        sign = -1.0 if isinstance(node.op, ast.USub) else 1.0
        node = node.operand
    if not isinstance(node, ast.Constant):
        raise RuleError(f"{ast.unparse(node)!r}: {_describe(node)}")
    value = node.value
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise RuleError(f"{value!r} is not a number; rules compare scores with numbers")
    try:
        number = float(value)
    except OverflowError:
        number = math.inf
    if not math.isfinite(number):
        raise RuleError(f"{value!r} is not a finite number")
    return sign * number


def _describe(node: ast.expr) -> str:
    kinds = {
        ast.Call: "function calls are not allowed",
        ast.Attribute: "attribute access is not allowed",
        ast.Subscript: "subscripts are not allowed",
        ast.Lambda: "lambdas are not allowed",
        ast.BinOp: "arithmetic is not allowed",
        ast.UnaryOp: "only a sign in front of a number is allowed ('not' is not)",
        ast.Name: "a bare score name is not a rule; compare it with a number",
    }
    for kind, message in kinds.items():
        if isinstance(node, kind):
            return message
    return f"{type(node).__name__} expressions are not allowed; write `score <op> number`"
