"""`db3d study build|serve|export` (wired by db3d's CLI to `analysis.study.main`).

    build RESULTS out=DIR raters=N [seed=0] [methods=a,b,...]
    serve DIR [port=8000] [host=127.0.0.1] [origin=https://PUBLIC.HOST]
    export DIR [ties=exclude|half] [reference=METHOD]

Every misuse ends in one line on stderr and exit 2 (bad arguments) or 1 (the input cannot make a
study / is not a study), and every argument is checked before anything is written.
"""

from __future__ import annotations

import sys
from pathlib import Path

USAGE = __doc__.split("\n\n")[1]
KEYS = {"build": {"out", "raters", "seed", "methods"}, "serve": {"port", "host", "origin"},
        "export": {"ties", "reference"}}
HELP = {
    "build": "build RESULTS out=DIR raters=N [seed=0] [methods=a,b,...]\n  RESULTS  a sweep's results folder "
             "(method=*/subject=*/part-*.parquet)\n  out      a new or empty folder for the study\n  raters   "
             "how many raters (one opaque link each)\n  seed     the items' order per rater (default 0)\n  "
             "methods  which methods to compare, comma-separated, each once (default: all with ok trials)",
    "serve": "serve DIR [port=8000] [host=127.0.0.1] [origin=https://PUBLIC.HOST]\n  DIR      a study folder "
             "made by `build`\n  port     0-65535 (0: any free port)\n  host     the address to listen on "
             "(default 127.0.0.1: this machine only)\n  origin   the public origin raters use behind a proxy "
             "(votes from any other origin are refused)",
    "export": "export DIR [ties=exclude|half] [reference=METHOD]\n  DIR        a study folder\n  ties       "
              "exclude tied items (default) or count them half\n  reference  the method reported as method A",
}


class UsageError(ValueError):
    """A bad command line: exit 2."""


def _int(opts: dict, key: str, default: int | None = None, low: int | None = None, high: int | None = None) -> int:
    raw = opts.get(key)
    if raw is None:
        if default is None:
            raise UsageError(f"needs {key}=")
        return default
    try:
        value = int(raw)
    except ValueError:
        raise UsageError(f"{key}={raw!r} is not a whole number") from None
    if (low is not None and value < low) or (high is not None and value > high):
        raise UsageError(f"{key}={value} is out of range ({low}-{high if high is not None else '...'})")
    return value


def _parse(argv: list[str]) -> tuple[str, str, dict[str, str]]:
    if not argv or argv[0] not in KEYS:
        got = f"unknown command {argv[0]!r}" if argv else "no command"
        raise UsageError(f"{got}: expected build, serve or export")
    cmd = argv[0]
    if len(argv) < 2 or "=" in argv[1]:
        raise UsageError(f"{cmd} needs a {'RESULTS folder' if cmd == 'build' else 'study folder'} first")
    path, opts = argv[1], {}
    for arg in argv[2:]:
        key, eq, value = arg.partition("=")
        if not eq or key not in KEYS[cmd]:
            raise UsageError(f"unknown argument {arg!r} (takes {', '.join(sorted(KEYS[cmd]))} as key=value)")
        if key in opts:
            raise UsageError(f"{key}= given twice")
        opts[key] = value
    return cmd, path, opts


def _build(path: str, opts: dict) -> int:
    from .build import build_study

    if "out" not in opts:
        raise UsageError("needs out=DIR")
    raters = _int(opts, "raters", low=1)
    seed = _int(opts, "seed", default=0)
    methods = [m.strip() for m in opts.get("methods", "").split(",") if m.strip()] or None
    if "methods" in opts and not methods:
        raise UsageError("methods= is empty")
    if methods and len(set(methods)) != len(methods):
        twice = sorted({m for m in methods if methods.count(m) > 1})
        raise UsageError(f"methods={opts['methods']}: {', '.join(twice)} named more than once")
    if methods and len(methods) < 2:
        raise UsageError(f"methods={opts['methods']}: a comparison needs two methods")
    out = build_study(Path(path), Path(opts["out"]), raters, seed, methods)
    import json

    b = json.loads((out / "manifest.json").read_text())["balance"]
    print(f"study in {out}: rater links in {out / 'links.txt'}; serve with `db3d study serve {out}`\n"
          f"sides counterbalanced: each rater sees the first method on the left in {b['rater_left'][0]}-"
          f"{b['rater_left'][1]} of {b['items']} items; each item has it on the left for "
          f"{b['item_left'][0]}-{b['item_left'][1]} of {b['raters']} raters")
    return 0


def _serve(path: str, opts: dict) -> int:
    from .server import normalise_origin, serve

    port = _int(opts, "port", default=8000, low=0, high=65535)
    if opts.get("origin"):
        try:
            normalise_origin(opts["origin"])
        except ValueError as err:
            raise UsageError(str(err)) from None
    serve(Path(path), opts.get("host", "127.0.0.1"), port, opts.get("origin", ""))
    return 0


def _export(path: str, opts: dict) -> int:
    import pandas as pd

    from . import store
    from .votes import export_answers, tally, tally_markdown

    ties = opts.get("ties", "exclude")
    if ties not in ("exclude", "half"):
        raise UsageError(f"ties={ties!r}: use exclude or half")
    store.check(Path(path) / store.DB_NAME)  # a study folder, before anything is written
    if opts.get("reference"):
        methods = {m for m in store.methods(Path(path) / store.DB_NAME)}
        if opts["reference"] not in methods:
            raise UsageError(f"reference={opts['reference']!r} is not in this study (methods: {', '.join(sorted(methods))})")
    answers = export_answers(Path(path))
    df = pd.read_parquet(answers)
    table = tally(df, ties=ties, reference=opts.get("reference") or None)
    md = tally_markdown(table, ties=ties, answers=df)
    (Path(path) / "tally.md").write_text(md)
    table.to_csv(Path(path) / "tally.csv", index=False)
    print(f"answers: {answers}\n\n{md}")
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(__doc__.strip() if argv else __doc__.strip(), file=sys.stdout if argv else sys.stderr)
        return 0 if argv else 2
    if argv[0] in HELP and any(a in ("-h", "--help") for a in argv[1:]):
        print(f"db3d study {HELP[argv[0]]}")
        return 0
    cmd = argv[0]
    try:
        cmd, path, opts = _parse(argv)
        return {"build": _build, "serve": _serve, "export": _export}[cmd](path, opts)
    except UsageError as err:
        print(f"db3d study {cmd}: {err} (see db3d study {cmd} --help)" if cmd in KEYS
              else f"db3d study: {err} (see db3d study --help)", file=sys.stderr)
        return 2
    except (ValueError, OSError) as err:  # StudyError, NotAStudy, FileNotFoundError, a port in use, ...
        msg = " ".join(str(err).split()) or type(err).__name__
        print(f"db3d study {cmd}: {msg}", file=sys.stderr)
        return 1
