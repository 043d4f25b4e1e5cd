"""The harness's error types and the exit codes they map to.

Every error a user can cause is a :class:`BenchError` carrying one line that names
the offending thing (file, dataset, field, value) and what to do about it. The CLI
prints that line and exits with ``exit_code``; tracebacks only with ``--debug``.
Anything else that escapes a command is a bug: the CLI says so in one line and exits
:data:`EXIT_INTERNAL`, so CI can tell a crash from a regression.
"""

from __future__ import annotations

import signal

EXIT_OK = 0
EXIT_FAILURE = 1  # a regression was found or a cell failed
EXIT_BAD_INPUT = 2  # bad usage or bad input: manifest, data, baseline, arguments, file system
EXIT_INTERNAL = 3  # an internal error (a bug in the harness): rerun with --debug
# Nothing (or too little) was judged: no cell ran, or the gate compared fewer cells than
# the profile's min_compared. A gate that compared nothing must not pass as "OK".
EXIT_NOT_COMPARED = 4
EXIT_BROKEN_PIPE = 128 + signal.SIGPIPE  # 141: the reader of our output went away
EXIT_SIGINT = 128 + signal.SIGINT  # 130: Ctrl-C
EXIT_SIGTERM = 128 + signal.SIGTERM  # 143: SIGTERM (what `docker stop` sends)


class BenchError(Exception):
    """A failure with a one-line, user-facing message and an exit code."""

    exit_code: int = EXIT_BAD_INPUT

    def __init__(self, message: str, *, exit_code: int | None = None) -> None:
        super().__init__(message)
        if exit_code is not None:
            self.exit_code = exit_code

    @property
    def message(self) -> str:
        return str(self.args[0])


class InputError(BenchError):
    """Bad input: a manifest, dataset, baseline, config file or argument (exit 2)."""

    exit_code = EXIT_BAD_INPUT


class IntegrityError(InputError):
    """A file does not match its pinned size or hash (exit 2)."""


class SchemaError(InputError):
    """A JSON file we read carries another schema version or kind (exit 2)."""


class FileSystemError(InputError):
    """The file system refused a read or a write of a named path (exit 2).

    Built by :func:`harness.fsio.fs_error` from an ``OSError``; ``errno`` is the OS's
    error number (e.g. ``errno.ENOSPC``), ``path`` the file or folder concerned.
    """

    def __init__(self, message: str, *, path: str = "", errno: int | None = None) -> None:
        super().__init__(message)
        self.path = path
        self.errno = errno


class RunFailure(BenchError):
    """A run finished but something in it failed or regressed (exit 1)."""

    exit_code = EXIT_FAILURE


class RunStopped(BenchError):
    """A run stopped before its end and can be resumed: a signal, or a run folder that
    refuses writes. Carries the run's id and folder so the CLI can print the exact
    ``--resume`` command; ``exit_code`` is 130/143 for a signal, 2 for the file system."""

    def __init__(self, message: str, *, run_id: str, run_dir: str, exit_code: int) -> None:
        super().__init__(message, exit_code=exit_code)
        self.run_id = run_id
        self.run_dir = run_dir


class Terminated(BaseException):
    """Raised in the main thread by the CLI's SIGTERM handler, like KeyboardInterrupt for
    SIGINT, so that ``finally`` blocks run (child processes stopped, temporary files
    removed) before the process exits 143."""
