"""The harness's error types and the exit codes they map to.

Every error a user can cause is a :class:`BenchError` carrying one line that names
the offending thing (file, dataset, field, value) and what to do about it. The CLI
prints that line and exits with ``exit_code``; tracebacks only with ``--debug``.
"""

from __future__ import annotations

EXIT_OK = 0
EXIT_FAILURE = 1  # a regression was found or a cell failed
EXIT_BAD_INPUT = 2  # bad usage or bad input: manifest, data, baseline, arguments


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


class RunFailure(BenchError):
    """A run finished but something in it failed or regressed (exit 1)."""

    exit_code = EXIT_FAILURE
