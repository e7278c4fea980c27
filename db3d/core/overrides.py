"""Override keys checked before Hydra sees them: an unknown key is answered with the nearest valid
one (`nerf.stpes=10` -> "did you mean nerf.steps=10?"), where Hydra would advise `+nerf.stpes`."""

from __future__ import annotations

import difflib

CONFIG_GROUPS = ("backbone", "method", "preset")  # folders of db3d/conf: `backbone=tiny-sd` picks a file


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
