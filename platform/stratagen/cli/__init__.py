"""The ``stratagen`` command line: a thin layer over the Python API.

Every user mistake (a :class:`StratagenError`, a bad argument, a file operation the system
refuses) prints one ``error:`` line and exits 2.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
from typing import Sequence

from stratagen.registry import StratagenError, get_registry

from .arguments import Parser, os_error_line
from .verbs import HANDLERS, verb


# ----------------------------------------------------------------------------- plugins
@verb("plugins")
def _plugins(args: argparse.Namespace) -> int:
    registry = get_registry()
    rows = [dict(kind=c.kind, name=c.name, distribution=c.provider.distribution,
                 version=c.provider.version, plugin=c.provider.plugin) for c in registry.components()]
    failures = [dict(plugin=f.provider.plugin, distribution=f.provider.distribution,
                     version=f.provider.version, error=f.error) for f in registry.failures]
    if args.json:
        print(json.dumps({"components": rows, "failures": failures}, indent=2))
        return 0
    widths = {k: max([len(k)] + [len(str(r[k])) for r in rows]) for k in ("kind", "name", "distribution", "version")}
    print("  ".join(k.upper().ljust(w) for k, w in widths.items()) + "  PLUGIN")
    for r in rows:
        print("  ".join(str(r[k]).ljust(w) for k, w in widths.items()) + f"  {r['plugin']}")
    for f in failures:
        print(f"FAILED plugin {f['plugin']!r} from {f['distribution']} {f['version']}: {f['error']}")
    return 0


# ----------------------------------------------------------------------------- config
@verb("config")
def _config(args: argparse.Namespace) -> int:
    from stratagen import config as cfg

    if args.config_command == "schema":
        print(json.dumps(cfg.json_schema(), indent=2))
    elif cfg.is_compare_config(args.file):
        from stratagen import api

        print(api.show_compare(args.file, args.set), end="")
    else:
        print(cfg.dump_config(cfg.load_config(args.file, args.set)), end="")
    return 0


def _add_set(p: argparse.ArgumentParser) -> None:
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config key, e.g. --set data.root=s3://bucket/imagenet (repeatable)")


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(
        prog="stratagen", description="Train, sample, evaluate and compare masked generative image models.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("plugins", help="list installed components and plugins that failed to load",
                       description="List every component (kind, name, provider distribution and version), "
                                   "and every plugin that failed to load, with the reason.")
    p.add_argument("--json", action="store_true", help="machine-readable output")

    p = sub.add_parser("config", help="show a resolved config or the config JSON Schema",
                       description="Inspect configs.")
    csub = p.add_subparsers(dest="config_command", required=True, metavar="ACTION")
    show = csub.add_parser("show", help="print the fully resolved config (extends, --set and defaults applied); "
                                        "for a compare config, every variant's run config beneath it")
    show.add_argument("file", help="run or compare config (path or fsspec URL)")
    _add_set(show)
    csub.add_parser("schema", help="print the run-config JSON Schema assembled from installed plugins")

    from . import commands, edit  # imported on use: they import torch and the engine

    commands.add_parsers(sub, _add_set)
    edit.add_parser(sub, _add_set)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    if not _is_process_0():  # under torchrun process 0 reports for all; the others keep only crashes
        sys.stdout = open(os.devnull, "w")
        logging.disable(logging.WARNING)
    on_term = _raise_terminated_on_sigterm()
    try:
        args = build_parser().parse_args(argv)
        return HANDLERS[args.command](args) or 0
    except Terminated:
        if _is_process_0():
            print("terminated (SIGTERM): no half-written file is left; run the command again to redo it "
                  "(train and compare continue from what they finished; train needs --resume)", file=sys.stderr)
        return 143
    except StratagenError as exc:
        _error(str(exc))
        return 2
    except OSError as exc:  # a file the user named: permissions, a file where a folder belongs, ...
        _error(os_error_line(exc))
        return 2
    except KeyboardInterrupt:
        if _is_process_0():
            print("interrupted", file=sys.stderr)
        return 130
    finally:
        if on_term is not None:
            signal.signal(signal.SIGTERM, on_term)


class Terminated(BaseException):
    """SIGTERM (a job scheduler's stop, ``timeout``, ``kill``), raised where the process is, so the
    atomic writes under way clean up as they do for Ctrl-C."""


def _raise_terminated_on_sigterm() -> object | None:
    """Turn SIGTERM into :class:`Terminated` while a command runs; the handler it replaces (None
    outside the main thread, where no handler can be set)."""
    def terminate(signum: int, frame: object) -> None:
        raise Terminated

    try:
        return signal.signal(signal.SIGTERM, terminate)
    except ValueError:
        return None


def _is_process_0() -> bool:
    """True unless this is another process than the first under torchrun."""
    from stratagen.engine.devices.processes import launched_rank

    return launched_rank() == 0


def _error(message: str) -> None:
    """Print the one error line; under torchrun every process meets the same error, process 0 says it."""
    if _is_process_0():
        print(f"error: {message}", file=sys.stderr)


if __name__ == "__main__":
    sys.exit(main())
