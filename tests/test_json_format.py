"""The flat dotted-key view of records (pipeline.json_format.flatten): the run's config check and a
derived dataset's resume check both name what differs through it."""

from __future__ import annotations

from pipeline.json_format import flatten
from pipeline.run_config import changed_keys


def test_nested_dicts_become_dotted_keys_and_other_values_stay_whole():
    record = {"a": {"b": 1, "c": {"d": None}}, "e": [1, {"f": 2}], "g": "h"}
    assert flatten(record) == {"a.b": 1, "a.c.d": None, "e": [1, {"f": 2}], "g": "h"}
    assert flatten(3) == {"": 3}


def test_an_empty_dict_is_a_value_of_its_own_so_a_config_that_drops_it_changed():
    assert flatten({"a": {}}) == {"a": {}}
    empty = {"preset": "p", "rbmod": {}}
    assert changed_keys(empty, {"preset": "p"}) == ["rbmod: {} -> <unset>"]
    assert changed_keys(empty, {"preset": "p", "rbmod": {"steps": 4}}) == [
        "rbmod: {} -> <unset>",
        "rbmod.steps: <unset> -> 4",
    ]
    assert changed_keys(empty, {"preset": "p", "rbmod": {}}) == []
