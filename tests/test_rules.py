"""Filter rules: what parses, what is refused (with which message), and what each sample's verdict is."""

from __future__ import annotations

import math

import pytest

from pipeline.scoring.rules import KEPT, FilterRules, RuleError, Verdict

NAMES = {"clip_t", "clip_content", "dino_style", "leakage", "csd_style"}


def verdict(rules, **scores) -> Verdict:
    full = dict.fromkeys(NAMES, 0.5) | scores
    return FilterRules.parse(rules, NAMES).evaluate(full)


@pytest.mark.parametrize(
    ("rule", "passing", "failing"),
    [
        ("clip_t >= 0.25", 0.25, 0.2499),
        ("clip_t > 0.25", 0.2501, 0.25),
        ("clip_t < 0.25", 0.2499, 0.25),
        ("clip_t <= 0.25", 0.25, 0.2501),
        ("clip_t == 0.25", 0.25, 0.2501),
        ("clip_t != 0.25", 0.2501, 0.25),
        ("0.25 <= clip_t", 0.25, 0.2499),  # the number may come first
        ("clip_t > -0.5", -0.4, -0.5),  # negative numbers
        ("clip_t >= -2.5e-1", -0.25, -0.2500001),  # scientific notation
        ("clip_t < 1E+2", 99.0, 100.0),
        ("clip_t >= 1", 1.0, 0.999),  # integers
        ("  clip_t>=+0.1  ", 0.1, 0.0),  # whitespace, unary plus
        ("0.2 <= clip_t < 0.9", 0.2, 0.9),  # chains
    ],
)
def test_each_operator_and_number_form(rule, passing, failing):
    assert verdict([rule], clip_t=passing) == KEPT
    rejected = verdict([rule], clip_t=failing)
    assert rejected == Verdict("rejected", rule.strip(), failing, "clip_t")


def test_first_failing_comparison_in_config_order_is_reported():
    rules = ["clip_t >= 0.25", "dino_style <= 0.95 and leakage < 0.6", "csd_style > 0.1"]
    assert verdict(rules, clip_t=0.3, dino_style=0.9, leakage=0.5, csd_style=0.2) == KEPT
    both_bad = verdict(rules, clip_t=0.1, dino_style=0.99, leakage=0.7, csd_style=0.0)
    assert both_bad == Verdict("rejected", "clip_t >= 0.25", 0.1, "clip_t")
    second = verdict(rules, clip_t=0.3, dino_style=0.9, leakage=0.7, csd_style=0.0)
    assert second == Verdict("rejected", "leakage < 0.6", 0.7, "leakage")  # the comparison, as written
    assert second.reason == "leakage < 0.6 failed: leakage=0.7"
    last = verdict(rules, clip_t=0.3, dino_style=0.9, leakage=0.5, csd_style=0.05)
    assert (last.rule, last.value) == ("csd_style > 0.1", 0.05)
    assert KEPT.reason is None


def test_a_single_string_is_one_rule_and_no_rules_keep_everything():
    assert len(FilterRules.parse("clip_t > 0.1 and leakage < 0.5", NAMES)) == 2
    empty = FilterRules.parse([], NAMES)
    assert len(empty) == 0 and empty.evaluate({}) == KEPT


def test_a_score_that_is_none_makes_its_rules_not_apply():
    rules = ["clip_content >= 0.7", "clip_t >= 0.25"]
    assert verdict(rules, clip_content=None, clip_t=0.3) == KEPT  # stylization mode: no content score
    assert verdict(rules, clip_content=None, clip_t=0.2) == Verdict(
        "rejected", "clip_t >= 0.25", 0.2, "clip_t"
    )
    assert verdict(rules, clip_content=0.6, clip_t=0.3).rule == "clip_content >= 0.7"


def test_nan_fails_every_comparison_but_not_equal():
    failed = verdict(["leakage < 0.6"], leakage=math.nan)
    assert failed.status == "rejected" and math.isnan(failed.value)
    assert verdict(["leakage != 0.6"], leakage=math.nan) == KEPT


def test_a_score_missing_from_the_dict_is_an_error():
    rules = FilterRules.parse(["leakage < 0.6"], NAMES)
    with pytest.raises(KeyError, match="no score 'leakage' given for rule 'leakage < 0.6'"):
        rules.evaluate({"clip_t": 0.3})


def test_unknown_score_names_fail_at_load_naming_the_rule():
    with pytest.raises(RuleError) as error:
        FilterRules.parse(["clip_t >= 0.25", "aesthetic > 5"], NAMES)
    message = str(error.value)
    assert message.startswith("filter rule 2 'aesthetic > 5': unknown score 'aesthetic'; available: ")
    assert "clip_content, clip_t, csd_style, dino_style, leakage" in message
    # without names (config-load syntax check) any identifier is accepted
    assert FilterRules.parse(["aesthetic > 5"], None).scores_used == {"aesthetic"}


@pytest.mark.parametrize(
    ("rule", "problem"),
    [
        ("__import__('os').system('x')", "function calls are not allowed"),
        ("clip_t.__class__", "attribute access is not allowed"),
        ("clip_t.__class__ > 1", "attribute access is not allowed"),
        ("(lambda: 1)()", "function calls are not allowed"),
        ("lambda: 1", "lambdas are not allowed"),
        ("clip_t >= 0.2 or 1", "only 'and' may join comparisons ('or' is not allowed)"),
        ("clip_t >= 0.2 or clip_t < 0.1", "'or' is not allowed"),
        ("clip_t >= 0.2 and (lambda: 1)()", "function calls are not allowed"),
        ("clip_t > abs(-1)", "function calls are not allowed"),
        ("scores['clip_t'] > 0.2", "subscripts are not allowed"),
        ("clip_t > 'a'", "'a' is not a number"),
        ("clip_t > True", "True is not a number"),
        ("clip_t > None", "None is not a number"),
        ("clip_t > 1j", "1j is not a number"),
        ("clip_t > 1e999", "is not a finite number"),
        ("clip_t + 1 > 2", "arithmetic is not allowed"),
        ("clip_t > --1", "only a sign in front of a number is allowed"),
        ("not clip_t > 1", "('not' is not)"),
        ("clip_t", "a bare score name is not a rule"),
        ("0.5", "is not a comparison"),
        ("clip_t > leakage", "must compare exactly one score with numbers, found 2"),
        ("1 < 2", "must compare exactly one score with numbers, found 0"),
        ("clip_t in (1, 2)", "operator In in 'clip_t in (1, 2)' is not allowed"),
        ("clip_t is 1", "operator Is"),
        ("clip_t >= 0.25;", "not a valid comparison"),
        ("clip_t >= 0.25; import os", "not a valid comparison"),
        ("clip_t >=", "not a valid comparison"),
        ("clip_t => 0.2", "not a valid comparison"),
        ("(x := 1) > 0", "NamedExpr expressions are not allowed"),
        ("clip_t if 1 else 0", "IfExp expressions are not allowed"),
        ("[clip_t > 1]", "List expressions are not allowed"),
        ("f'{clip_t}' > 1", "JoinedStr expressions are not allowed"),
        ("", "the rule is empty"),
        ("   ", "the rule is empty"),
        ("clip_t > " + "(" * 300 + "1" + ")" * 300, "not a valid comparison"),
        ("clip_t > 0." + "1" * 1000, "longer than 1000 characters"),
    ],
)
def test_everything_but_plain_comparisons_is_refused(rule, problem):
    with pytest.raises(RuleError) as error:
        FilterRules.parse(["clip_t >= 0", rule], NAMES)
    message = str(error.value)
    assert message.startswith(f"filter rule 2 {rule!r}: ")
    assert problem in message


def test_non_string_rules_are_refused():
    with pytest.raises(RuleError, match="filter rule 1 0.5: a rule must be a string, got float"):
        FilterRules.parse([0.5], NAMES)
