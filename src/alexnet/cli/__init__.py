"""The ``alexnet`` command: one sub-command per module, errors as one line on stderr."""

from __future__ import annotations

import argparse
import os
import sys
import time
import traceback

from ..errors import AlexNetError
from . import ablate, activations, bench, evaluate, export, filters, neighbors, predict, prepare, report, summary, train

COMMANDS = (summary, prepare, train, evaluate, predict, export, report, bench, filters, neighbors, activations, ablate)


class OneLineParser(argparse.ArgumentParser):
    """argparse, but a usage error is one line on stderr (status 2), not usage text plus a line."""

    def error(self, message: str):  # type: ignore[override]
        self.exit(2, f"{self.prog}: error: {message}\n")


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(prog="alexnet", description="AlexNet from scratch: train, evaluate, predict, export.")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=OneLineParser, metavar="COMMAND")
    for module in COMMANDS:
        module.add_parser(sub)
    return parser


def process_age() -> float:
    """Seconds since this process started (Linux: from /proc), so that a budget counts the
    interpreter's and torch's start-up too; 0 where that cannot be read."""
    try:
        with open("/proc/self/stat") as f:
            start_ticks = int(f.read().rsplit(")", 1)[1].split()[19])
        with open("/proc/uptime") as f:
            uptime = float(f.read().split()[0])
        return max(0.0, uptime - start_ticks / os.sysconf("SC_CLK_TCK"))
    except (OSError, ValueError, IndexError):
        return 0.0


def main(argv: list[str] | None = None) -> int:
    # When the command started: the process's start for a command run as a program, so that a
    # time budget counts the interpreter's and torch's start-up; now when called from Python.
    started = time.perf_counter() - (process_age() if argv is None else 0.0)
    args = build_parser().parse_args(argv)
    args.started = started
    try:
        return int(args.run(args) or 0)
    except AlexNetError as e:
        code = getattr(e, "exit_code", 2)  # a graceful stop on a signal carries 128 + its number
        print(f"alexnet {args.command}: {'' if code != 2 else 'error: '}{e}", file=sys.stderr)
        return code
    except KeyboardInterrupt:
        print(f"alexnet {args.command}: interrupted", file=sys.stderr)
        return 130
    except Exception as e:  # a bug: one line, the traceback on request
        if os.environ.get("ALEXNET_DEBUG"):
            traceback.print_exc()
        print(f"alexnet {args.command}: internal error: {type(e).__name__}: {e} (set ALEXNET_DEBUG=1 for the traceback)",
              file=sys.stderr)  # fmt: skip
        return 1
