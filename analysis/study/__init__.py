"""User-study kit: a blind two-alternative forced-choice study over a sweep's results.

    build_study(results, out, raters, seed, methods)  -> study folder (media, manifest, SQLite)
    make_server / serve(study_dir, host, port)        -> the rating server (standard library only)
    export_answers(study_dir) -> answers.parquet;  tally(answers) -> DataFrame;  tally_markdown
    main(argv)                                        -> `db3d study build|serve|export ...`

Reads Parquet only and never imports training code. Heavy imports (pandas, pyarrow) load lazily,
so the server starts fast.
"""

from __future__ import annotations

from .cli import main

_LAZY = {
    "build_study": "build", "read_results": "build", "StudyError": "build", "QUESTIONS": "build",
    "make_server": "server", "serve": "server",
    "export_answers": "votes", "read_answers": "votes", "tally": "votes", "tally_markdown": "votes", "wilson": "votes",
}
__all__ = ["main", *_LAZY]


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
