"""Command-line `key=value` arguments: db3d's one parser of a command's own keys (`key_values`),
and the check of Hydra override keys before Hydra sees them: an unknown key is answered with the
nearest valid one (`nerf.stpes=10` -> "did you mean nerf.steps=10?"), where Hydra would advise
`+nerf.stpes`."""

from __future__ import annotations

import difflib
from collections.abc import Iterable

CONFIG_GROUPS = ("backbone", "method", "preset")  # folders of db3d/conf: `backbone=tiny-sd` picks a file


class KeyValueError(ValueError):
    """A `key=value` argument whose value its default's type cannot parse. The message is the type's
    own (e.g. int's "invalid literal for int() with base 10: 'many'"); `key`, `value` and `kind`
    (the type's name) let a command say it its way."""

    def __init__(self, key: str, value: str, kind: str, message: str):
        super().__init__(message)
        self.key, self.value, self.kind = key, value, kind


def _typed(key: str, value: str, default):
    """`value` as the type of `default` (a str when the default is None or a str)."""
    if default is None or isinstance(default, str):
        return value
    if isinstance(default, bool):  # bool("false") is True: spell it out
        if value.lower() not in ("true", "false"):
            raise KeyValueError(key, value, "bool", f"{key}={value!r}: must be true or false")
        return value.lower() == "true"
    kind = type(default)
    try:
        return kind(value)
    except ValueError as err:
        raise KeyValueError(key, value, kind.__name__, str(err)) from None


def key_values(argv: Iterable[str], keys: dict | Iterable[str], lstrip: str = "") -> tuple[dict, list[str]]:
    """Split command-line arguments into a command's own `key=value` settings and the rest.

    keys: the command's keys; a dict's values are their defaults, which type the given values
    (int("3"), float("7.5"); None or a str default: the string as given). lstrip: leading characters
    dropped from a key (lstrip="-" reads `--out=DIR` as `out=DIR`).
    Returns ({key: value} of the keys given, the last of a repeated key winning; defaults are not
    filled in) and every other argument, in order. A value that its default's type cannot parse
    raises KeyValueError.

        key_values(["out=o", "n=3", "seed=1"], {"out": "", "n": 8})  ->  ({"out": "o", "n": 3}, ["seed=1"])
    """
    defaults = keys if isinstance(keys, dict) else dict.fromkeys(keys)
    given, rest = {}, []
    for arg in argv:
        key, sep, value = arg.partition("=")
        key = key.lstrip(lstrip) if lstrip else key
        if sep and key in defaults:
            given[key] = _typed(key, value, defaults[key])
        else:
            rest.append(arg)
    return given, rest


def nearest_key(key: str, keys: list[str]) -> str | None:
    """The valid key a mistyped one most likely meant: the same last part under another section
    (`weights` -> `metrics.weights`), else the closest spelling (`nerf.stpes` -> `nerf.steps`)."""
    section, _, last = key.rpartition(".")
    same_last = [k for k in keys if k.rsplit(".", 1)[-1] == last]
    if len(same_last) == 1:
        return same_last[0]
    pool = [k for k in keys if k.startswith(section + ".")] if section else keys
    by_last = {}
    for k in pool:
        by_last.setdefault(k.rsplit(".", 1)[-1], k)
    close = difflib.get_close_matches(last, list(by_last), n=1, cutoff=0.7)
    if close:
        return by_last[close[0]]
    close = difflib.get_close_matches(key, keys, n=1, cutoff=0.85)  # a misspelled section: nref.steps
    return close[0] if close else None


def check_override_keys(overrides: list[str], valid: list[str]) -> list[str]:
    """One problem per unknown key, answered with the nearest of the `valid` keys (before Hydra,
    whose advice would be to append the typo with `+`). Values and Hydra's syntax are left to Hydra."""
    keys, problems = set(valid), []
    sections = {k.split(".", 1)[0] for k in keys if "." in k}
    for arg in overrides:
        key, eq, value = arg.partition("=")
        key = key.lstrip("+~")
        if not eq or not key or key in keys:
            continue
        if key in sections:
            problems.append(f"{arg}: {key} is a section; set one of its keys, e.g. "
                            f"{min(k for k in keys if k.startswith(key + '.'))}=...")
            continue
        hint = nearest_key(key, sorted(keys))
        problems.append(f"{arg}: unknown key {key!r}" + (f"; did you mean {hint}={value}?" if hint else
                        " (every key is documented in db3d/core/config.py; `db3d run --help` lists them)"))
    return problems
