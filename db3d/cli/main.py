"""`db3d` command line: run | sweep | metrics | report | study | toyworld | check-data | doctor.

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

`db3d COMMAND --help` says what a command takes. Overrides use Hydra's syntax over the groups
backbone=, method=, preset= and any field of db3d.core.config.RunConfig. Bad input fails before any
model loads, with no traceback: the config first, then the subject and data, then the weights.
"""

from __future__ import annotations

import dataclasses
import sys

# Each command's modules are imported inside the function that runs it ("per command" below), so
# `db3d --help` and a mistyped command cost Python's start-up and this file only.

COMMANDS = ("run", "sweep", "metrics", "report", "study", "toyworld", "check-data", "doctor")
HELP = {
    "check-data": "db3d check-data PATH [PATH ...]\n\n  PATH  a subject folder (3-6 photos) or a DreamBooth-layout "
                  "dataset root (prompts_and_classes.txt + one folder per subject)\n\nOne line per subject; "
                  "exit 1 on any problem.",
    "doctor": "db3d doctor\n\nTakes nothing. Prints versions, devices, optional backends (tiny-cuda-nn) and where "
              "model weights are looked for (db3d loads weights offline only).",
}


def _usage() -> int:
    print(__doc__.strip(), file=sys.stderr)
    return 2


def run_help() -> str:
    """What `db3d run` takes: the groups and every key, by section (documented in db3d/core/config.py)."""
    from importlib import resources  # per command (~8 ms)

    from db3d.core.config import RunConfig  # per command (~25 ms)
    from db3d.core.overrides import CONFIG_GROUPS  # per command

    lines = ["db3d run [group=option ...] [key=value ...]", "",
             "e.g. db3d run subject=PATH prompt=\"a sks dog sleeping\" preset=smoke out=DIR", "", "groups:"]
    for group in CONFIG_GROUPS:
        options = sorted(p.name[:-5] for p in resources.files("db3d.conf").joinpath(group).iterdir()
                         if p.name.endswith(".yaml"))
        lines.append(f"  {group}={'|'.join(options)}")
    cfg = RunConfig()
    top = [f.name for f in dataclasses.fields(cfg) if not dataclasses.is_dataclass(getattr(cfg, f.name))]
    lines += ["", "keys (every one documented in db3d/core/config.py):", f"  {', '.join(top)}"]
    for f in dataclasses.fields(cfg):
        section = getattr(cfg, f.name)
        if dataclasses.is_dataclass(section):
            lines.append(f"  {f.name}.{{{', '.join(g.name for g in dataclasses.fields(section))}}}")
    return "\n".join(lines)


def _help(command: str, rest: list[str]) -> int | None:
    """`db3d COMMAND --help`: 0 after printing what the command takes; None when not asked."""
    if not any(a in ("-h", "--help") for a in rest):
        return None
    if command in ("report", "study"):  # they answer --help themselves
        return None
    if command == "run":
        text = run_help()
    elif command == "sweep":
        from db3d.distributed import sweep  # per command (pandas, pyarrow: ~0.5 s)

        text = (f"db3d sweep sweep=NAME_OR_PATH out=DIR_OR_URI [key=value ...] [run overrides ...]\n\n"
                f"{sweep.__doc__.strip()}\n\nsweep keys: {', '.join(sweep.SWEEP_KEYS)} (and --no-reuse); "
                f"anything else is a run override for every trial (see db3d run --help)")
    elif command == "metrics":
        from db3d.cli import metrics as metrics_cli  # per command (pandas: ~0.5 s)

        text = metrics_cli.__doc__.strip()
    elif command == "toyworld":
        from db3d.cli import toyworld as toyworld_cli  # per command

        text = toyworld_cli.__doc__.strip()
    else:
        text = HELP[command]
    print(text)
    return 0


def _run(rest: list[str]) -> int:
    """`db3d run`: config, then subject and data, then weights; one line per problem, exit 2."""
    from db3d.cli.run import run  # per command (torch: ~1.5 s)
    from db3d.core.config import ConfigError, compose  # per command
    from db3d.core.data import DataError  # per command (numpy)

    try:
        cfg = compose(rest)
        run(cfg)
    except (ConfigError, DataError) as err:
        for line in getattr(err, "problems", None) or str(err).splitlines() or [type(err).__name__]:
            print(f"db3d run: {line}", file=sys.stderr)
        return 2
    except FileNotFoundError as err:  # missing real weights (backbone or metrics)
        print(f"db3d run: {_weights_line(err)}", file=sys.stderr)
        return 2
    return 0


def _weights_line(err: Exception) -> str:
    """A missing-weights error as one line with the key that provides them."""
    first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
    if type(err).__name__ == "MetricWeightsNotFound":
        return (f"{first} Give a folder with metrics.weights=DIR, or run without metrics "
                "(metrics.enabled=false); db3d doctor says where weights are looked for")
    return " ".join(str(err).split())


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv:
        return _usage()
    if argv[0] in ("-h", "--help", "help"):
        print(__doc__.strip())
        return 0
    command, rest = argv[0], argv[1:]
    if command in COMMANDS and (code := _help(command, rest)) is not None:
        return code
    if command == "check-data":
        from db3d.core.data import check_data_main  # per command (numpy)

        return check_data_main(rest)
    if command == "sweep":
        from db3d.distributed.sweep import main as sweep_main  # per command (pandas, pyarrow)

        return sweep_main(rest)
    if command == "metrics":
        from db3d.cli.metrics import main as metrics_main  # per command (pandas)

        return metrics_main(rest)
    if command == "report":
        from analysis.report import main as report_main  # per command (pandas)

        return report_main(rest)
    if command == "study":
        from analysis.study import main as study_main  # per command

        return study_main(rest)
    if command == "toyworld":
        from db3d.cli.toyworld import main as toyworld_main  # per command

        return toyworld_main(rest)
    if command == "doctor":
        from db3d.cli.doctor import doctor  # per command (torch)

        return doctor()
    if command == "run":
        return _run(rest)
    print(f"db3d: unknown command {command!r}; commands: {', '.join(COMMANDS)} (db3d --help)", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
