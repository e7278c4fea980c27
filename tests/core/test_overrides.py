"""db3d's one parser of a command's own key=value arguments (db3d/core/overrides.py: key_values)."""

from __future__ import annotations

import pytest

from db3d.core.overrides import KeyValueError, key_values


def test_own_keys_are_typed_like_their_defaults_and_the_rest_kept_in_order():
    given, rest = key_values(["out=o", "nerf.steps=4", "n=3", "g=0.5", "name=", "seed", "n=5", "x=1"],
                             {"out": "", "n": 8, "g": 7.5, "name": None})
    assert given == {"out": "o", "n": 5, "g": 0.5, "name": ""}  # the last of a repeated key wins
    assert rest == ["nerf.steps=4", "seed", "x=1"]  # `seed` without '=' is not a setting
    assert key_values(["a=1=2"], ["a"]) == ({"a": "1=2"}, [])  # a value may hold '=' (split at the first)


def test_defaults_are_not_filled_in_and_lstrip_reads_dashed_keys():
    assert key_values([], {"out": "x"}) == ({}, [])
    assert key_values(["--out=d", "-gpu=1", "--nope=2"], ("out", "gpu"), lstrip="-") == \
        ({"out": "d", "gpu": "1"}, ["--nope=2"])
    assert key_values(["--out=d"], ("out",)) == ({}, ["--out=d"])  # without lstrip a dash is part of the key


def test_a_bad_value_names_its_key_with_the_types_own_message():
    with pytest.raises(KeyValueError, match=r"invalid literal for int\(\) with base 10: 'many'") as info:
        key_values(["steps=many"], {"steps": 3})
    assert (info.value.key, info.value.value, info.value.kind) == ("steps", "many", "int")
    assert isinstance(info.value, ValueError)  # commands that catch ValueError still do
    assert key_values(["on=False", "off=true"], {"on": True, "off": False})[0] == {"on": False, "off": True}
    with pytest.raises(KeyValueError, match="flag='yes': must be true or false"):
        key_values(["flag=yes"], {"flag": False})
