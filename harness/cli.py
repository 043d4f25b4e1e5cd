"""``bench``: the one entry point (also the container's entrypoint).

Each subcommand lives in its own module under :mod:`harness.commands` and exposes
``register(subparsers)``, which adds its parser and sets ``func(args) -> int``; the
options several commands share are declared once, in :mod:`harness.commands.options`.
A command module imports what is heavy (TensorFlow, matplotlib) inside its functions,
so that ``bench --help`` stays quick.
Errors a user can cause are :class:`~harness.errors.BenchError`: printed as one line,
exit code from the error, no traceback unless ``--debug`` (or ``BENCH_DEBUG=1``).

:func:`main` is also the last line of defence, so that every fault ends as one line and
a known exit code (:data:`EXIT_CODES`): a file-system error on a named path that no
command caught is bad input (2); anything else is a bug (3, "internal error"); SIGINT
and SIGTERM end the command through its ``finally`` blocks (130, 143). An output that
went away ends it quietly with 141, as a process killed by SIGPIPE would (the shell's
convention, and what ``bench docker run`` returns): a reader that closed our stdout
(``bench list | head -1``), a stdout closed before we started (``bench list >&-``) or one
that refuses writes (``bench list > /dev/full``). All of them are told apart from other
errors in one place, :func:`_stdout_failed`.
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import io
import os
import select
import signal
import sys
import threading
from collections.abc import Iterator, Sequence
from types import ModuleType
from typing import Any

from harness import __version__, fsio
from harness.commands import (
    ab,
    baseline,
    compare,
    dashboard,
    data,
    docker,
    export,
    history,
    merge,
    perf,
    pretrain,
    report,
    run,
)
from harness.errors import (
    EXIT_BAD_INPUT,
    EXIT_BROKEN_PIPE,
    EXIT_FAILURE,
    EXIT_INTERNAL,
    EXIT_OK,
    EXIT_SIGINT,
    EXIT_SIGTERM,
    BenchError,
    RunStopped,
    Terminated,
)

# One module per subcommand group, registered in this order (the order of --help).
COMMANDS: tuple[ModuleType, ...] = (
    data, run, merge, compare, ab, perf, baseline, report, history, dashboard, export,
    pretrain, docker,
)  # fmt: skip


EXIT_CODES: tuple[tuple[int, str], ...] = (
    (EXIT_OK, "all good"),
    (EXIT_FAILURE, "a regression was found or a cell failed"),
    (
        EXIT_BAD_INPUT,
        "bad usage or bad input: arguments, matrix, manifest, data, baseline, a run\n"
        "folder in use, a file system that refuses a read or a write",
    ),
    (EXIT_INTERNAL, "an internal error, a bug in the harness (rerun with --debug)"),
    (EXIT_SIGINT, "interrupted (SIGINT, Ctrl-C); bench all prints how to resume"),
    (EXIT_SIGTERM, "terminated (SIGTERM, e.g. docker stop); bench all prints how to resume"),
    (
        EXIT_BROKEN_PIPE,
        "the output went away: its reader left (bench list | head -1), or stdout is\n"
        "closed (>&-) or refuses writes (> /dev/full); nothing more is printed",
    ),
)


def _epilog() -> str:
    lines = ["exit codes:"]
    for code, meaning in EXIT_CODES:
        first, *rest = meaning.split("\n")
        lines += [f"  {code:<4} {first}", *(f"       {line}" for line in rest)]
    lines.append("Errors are one line; --debug (or BENCH_DEBUG=1) shows the traceback.")
    return "\n".join(lines)


class _Parser(argparse.ArgumentParser):
    """argparse, but usage errors exit 2 with one line naming the bad argument."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(EXIT_BAD_INPUT, f"{self.prog}: error: {message} (see '{self.prog} --help')\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="bench",
        description="transfer-bench: reproducible transfer-learning benchmarks on images.",
        epilog=_epilog(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
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
    for command in COMMANDS:
        command.register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    _watch_stdout()
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except BenchError as exc:  # an option's value refused as it was read (harness.outputs)
        _say(f"bench: error: {exc.message}")
        return exc.exit_code
    try:
        with _sigterm_raises():
            code = int(args.func(args) or 0)
            sys.stdout.flush()  # a closed pipe shows up here, not in the exit-time flush
        return code
    except OSError as exc:
        if exc.filename is None and _stdout_failed():
            _silence_stdout()
            return EXIT_BROKEN_PIPE
        if args.debug:
            raise
        if exc.filename is None:
            return _internal(args, exc)
        _say(f"bench: error: {fsio.fs_error(exc).message}")  # a path no command guarded
        return EXIT_BAD_INPUT
    except BenchError as exc:
        if args.debug:
            raise
        signalled = isinstance(exc, RunStopped) and exc.exit_code in (EXIT_SIGINT, EXIT_SIGTERM)
        _say(f"bench: {'' if signalled else 'error: '}{exc.message}")
        return exc.exit_code
    except KeyboardInterrupt:
        _say("bench: interrupted")
        return EXIT_SIGINT
    except Terminated:
        _say("bench: terminated (SIGTERM)")
        return EXIT_SIGTERM
    except UnicodeDecodeError as exc:
        if args.debug:
            raise
        _say(f"bench: error: {fsio.fs_error(exc).message}")  # a file no command guarded
        return EXIT_BAD_INPUT
    except Exception as exc:
        return _internal(args, exc)


def _internal(args: argparse.Namespace, exc: BaseException | None) -> int:
    """A bug: one line naming the exception, exit 3 (the traceback with --debug)."""
    if args.debug:
        raise
    text = f"{type(exc).__name__}: {exc}".splitlines()[0][:300]
    _say(
        f"bench: internal error: {text}; this is a bug in transfer-bench: rerun with --debug "
        "for the traceback and report it"
    )
    return EXIT_INTERNAL


def _say(line: str) -> None:
    with contextlib.suppress(OSError):
        print(line, file=sys.stderr, flush=True)


@contextlib.contextmanager
def _sigterm_raises() -> Iterator[None]:
    """While a command runs, SIGTERM raises :class:`Terminated` in the main thread (like
    SIGINT raises KeyboardInterrupt), so the command's ``finally`` blocks run."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum: int, frame: Any) -> None:
        raise Terminated()

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


class _Stdout(io.TextIOWrapper):
    """The process's stdout, remembering whether a write to it failed: a failed write's
    bytes may be dropped, so flushing again does not always tell (see _stdout_failed)."""

    failed = False

    def write(self, text: str) -> int:
        try:
            return super().write(text)
        except OSError:
            self.failed = True
            raise

    def flush(self) -> None:
        try:
            super().flush()
        except OSError:
            self.failed = True
            raise


class _ClosedStdout(io.TextIOBase):
    """stdout when file descriptor 1 was closed before we started (``bench list >&-``):
    every write fails as on a pipe whose reader has gone."""

    def write(self, text: str) -> int:
        raise BrokenPipeError(errno.EPIPE, "stdout was closed before bench started")


def _watch_stdout() -> None:
    """Standard streams as :func:`_stdout_failed` needs them: /dev/null on the descriptors
    that were closed before we started, so that no file we open lands on them (a cell
    process would write its output into it), stdout then acting as a pipe whose reader has
    gone and stderr as /dev/null; else the process's stdout as :class:`_Stdout` (not a
    stream that someone else put there, such as a test's capture)."""
    _cover_closed_std_fds()
    out = sys.stdout
    if out is not None and out is sys.__stdout__ and type(out) is io.TextIOWrapper:
        with contextlib.suppress(AttributeError, ValueError, OSError):
            out.flush()
            sys.stdout = _Stdout(
                out.buffer,
                encoding=out.encoding,
                errors=out.errors,
                line_buffering=out.line_buffering,
                write_through=out.write_through,
            )


def _cover_closed_std_fds() -> None:
    for fd in (0, 1, 2):
        try:
            os.fstat(fd)
        except OSError:
            devnull = os.open(os.devnull, os.O_RDWR)  # the lowest free descriptor: fd
            if devnull != fd:
                os.dup2(devnull, fd)
                os.close(devnull)
            if fd == 2:
                sys.stderr = open(os.devnull, "w", encoding="utf-8")  # noqa: SIM115
    if sys.stdout is None:  # Python found fd 1 closed at its start
        sys.stdout = _ClosedStdout()


def _stdout_failed() -> bool:
    """Whether our stdout can take no more output: closed before we started, a pipe whose
    reader has gone, or a file or device that refuses writes (full, failing). Told by
    :class:`_Stdout`; for another stream, by flushing it again (bytes still buffered fail
    again) and by POLLERR on a pipe's write end (its reader left)."""
    out = sys.stdout
    if out is None or isinstance(out, _ClosedStdout) or getattr(out, "failed", False):
        return True
    try:
        out.flush()
    except (OSError, ValueError):
        return True
    try:
        poller = select.poll()
        poller.register(out.fileno(), select.POLLOUT)
        return any(ev & (select.POLLERR | select.POLLHUP) for _, ev in poller.poll(0))
    except (OSError, ValueError, AttributeError):
        return False  # not a real stream (captured): it did not fail


def _silence_stdout() -> None:
    """Point stdout at /dev/null, so the interpreter's exit-time flush stays quiet."""
    with contextlib.suppress(OSError, ValueError, AttributeError):
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
