"""`db3d study build|serve|export` (wired by db3d's CLI to `analysis.study.main`).

    build RESULTS out=DIR raters=N [seed=0] [methods=a,b,...]
    serve DIR [port=8000] [host=127.0.0.1] [origin=https://PUBLIC.HOST]
    export DIR [ties=exclude|half] [reference=METHOD]
"""

from __future__ import annotations

import sys
from pathlib import Path

USAGE = __doc__.split("\n\n", 1)[1]
KEYS = {"build": {"out", "raters", "seed", "methods"}, "serve": {"port", "host", "origin"}, "export": {"ties", "reference"}}


def _parse(argv: list[str]) -> tuple[str, str, dict[str, str]]:
    if len(argv) < 2 or argv[0] not in KEYS:
        raise ValueError("expected a command and a path")
    cmd, path, opts = argv[0], argv[1], {}
    for arg in argv[2:]:
        key, eq, value = arg.partition("=")
        if not eq or key not in KEYS[cmd]:
            raise ValueError(f"{cmd}: unknown argument {arg!r} (takes {', '.join(sorted(KEYS[cmd]))} as key=value)")
        opts[key] = value
    return cmd, path, opts


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        cmd, path, opts = _parse(argv)
    except ValueError as err:
        print(f"study: {err}\nusage:\n{USAGE}", file=sys.stderr)
        return 2
    try:
        if cmd == "build":
            from .build import StudyError, build_study

            if "out" not in opts or "raters" not in opts:
                print(f"study build: needs out=DIR and raters=N\nusage:\n{USAGE}", file=sys.stderr)
                return 2
            methods = [m for m in opts.get("methods", "").split(",") if m] or None
            try:
                out = build_study(Path(path), Path(opts["out"]), int(opts["raters"]), int(opts.get("seed", 0)), methods)
            except StudyError as err:
                print(f"study build: {err}", file=sys.stderr)
                return 1
            import json

            b = json.loads((out / "manifest.json").read_text())["balance"]
            print(f"study in {out}: rater links in {out / 'links.txt'}; serve with `db3d study serve {out}`\n"
                  f"sides counterbalanced: each rater sees the first method on the left in {b['rater_left'][0]}-"
                  f"{b['rater_left'][1]} of {b['items']} items; each item has it on the left for "
                  f"{b['item_left'][0]}-{b['item_left'][1]} of {b['raters']} raters")
            return 0
        if cmd == "serve":
            from .server import serve

            serve(Path(path), opts.get("host", "127.0.0.1"), int(opts.get("port", 8000)), opts.get("origin", ""))
            return 0
        from .votes import export_answers, tally, tally_markdown

        ties = opts.get("ties", "exclude")
        answers = export_answers(Path(path))
        import pandas as pd

        table = tally(pd.read_parquet(answers), ties=ties, reference=opts.get("reference") or None)
        md = tally_markdown(table, ties=ties, answers=pd.read_parquet(answers))
        (Path(path) / "tally.md").write_text(md)
        table.to_csv(Path(path) / "tally.csv", index=False)
        print(f"answers: {answers}\n\n{md}")
        return 0
    except (ValueError, FileNotFoundError, OSError) as err:
        print(f"study {cmd}: {err}", file=sys.stderr)
        return 1
