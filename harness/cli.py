"""``bench``: the one entry point (also the container's entrypoint).

Each subcommand lives in its own module under :mod:`harness.commands` and exposes
``register(subparsers)``, which adds its parser and sets ``func(args) -> int``.
Errors a user can cause are :class:`~harness.errors.BenchError`: printed as one line,
exit code from the error, no traceback unless ``--debug`` (or ``BENCH_DEBUG=1``).
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from collections.abc import Sequence

from harness import __version__
from harness.errors import EXIT_BAD_INPUT, BenchError

# One module per subcommand group, registered in this order (the order of --help).
COMMAND_MODULES: tuple[str, ...] = (
    "harness.commands.data",
    "harness.commands.run",
    "harness.commands.compare",
    "harness.commands.baseline",
    "harness.commands.report",
    "harness.commands.pretrain",
    "harness.commands.docker",
)


class _Parser(argparse.ArgumentParser):
    """argparse, but usage errors exit 2 with one line naming the bad argument."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(EXIT_BAD_INPUT, f"{self.prog}: error: {message} (see '{self.prog} --help')\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="bench",
        description="transfer-bench: reproducible transfer-learning benchmarks on images.",
    )
    parser.add_argument("--version", action="version", version=f"transfer-bench {__version__}")
    parser.add_argument(
        "--debug",
        action="store_true",
        default=os.environ.get("BENCH_DEBUG") == "1",
        help="show tracebacks for errors (also BENCH_DEBUG=1)",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    sub.required = True
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except BenchError as exc:
        if args.debug:
            raise
        print(f"bench: error: {exc.message}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("bench: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
