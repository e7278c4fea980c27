"""`db3d` command line: run | check-data | doctor.

    db3d run [key=value ...]       e.g. db3d run subject=PATH prompt="a sks dog sleeping" preset=smoke out=DIR
    db3d sweep sweep=NAME out=DIR  a sweep of sweeps/NAME.yaml on Ray (RAY_ADDRESS, or a local Ray);
                                   [reuse=false] [max_concurrent=N] [trainer=ray_train] [overrides...]
    db3d metrics RESULTS [metrics.key=value ...]   recompute the metrics of finished runs / trials
    db3d report RESULTS [out=DIR]   paper-style tables, plots, best configs and an HTML page
    db3d study build RESULTS out=DIR raters=N | serve DIR [port=8000] | export DIR
                                    blind two-alternative forced-choice user study
    db3d toyworld train-prior | samples | subjects | bench
                                    ToyWorld: its trained prior, subjects with known 3D shape, and the
                                    benchmark that scores every method against that shape
    db3d check-data PATH [PATH ...] a subject folder or a dataset root; exit 1 on any problem
    db3d doctor                     versions, devices, optional backends, where weights are looked for

Overrides use Hydra's syntax over the groups backbone=, method=, preset= and any field of
db3d.config.RunConfig. Bad input fails before any model loads, with no traceback.
"""

from __future__ import annotations

import sys


def _usage() -> int:
    print(__doc__.strip())
    return 2


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        return _usage()
    command, rest = argv[0], argv[1:]
    if command == "check-data":
        from .data import check_data_main

        return check_data_main(rest)
    if command == "sweep":
        from .distributed.sweep import main as sweep_main

        return sweep_main(rest)
    if command == "metrics":
        from .metrics_cli import main as metrics_main

        return metrics_main(rest)
    if command == "report":
        from analysis.report import main as report_main

        return report_main(rest)
    if command == "study":
        from analysis.study import main as study_main

        return study_main(rest)
    if command == "toyworld":
        from .toyworld.cli import main as toyworld_main

        return toyworld_main(rest)
    if command == "doctor":
        from .doctor import doctor

        return doctor()
    if command == "run":
        from .config import ConfigError, compose
        from .data import DataError
        from .run import run

        try:
            cfg = compose(rest)
            run(cfg)
        except (ConfigError, DataError) as err:
            print(f"db3d run: invalid input:\n{err}", file=sys.stderr)
            return 2
        except FileNotFoundError as err:  # includes BackboneNotFound: missing real weights
            print(f"db3d run: {err}", file=sys.stderr)
            return 2
        return 0
    print(f"db3d: unknown command {command!r}\n", file=sys.stderr)
    return _usage()


if __name__ == "__main__":
    sys.exit(main())
