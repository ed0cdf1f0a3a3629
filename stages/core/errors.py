"""The one exception a stage raises for bad data or a failed run (exit code 1), and how bad options
become usage errors (exit code 2)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import click


class StageError(click.ClickException):
    """A failure of the data or the run; the message names the file and the fix."""

    exit_code = 1

    def format_message(self) -> str:
        return self.message


@contextmanager
def usage_errors() -> Iterator[None]:
    """A ValueError from checking options (e.g. an options dataclass's `validate`) becomes click's usage
    error with the same message: exit code 2, raised before the stage touches anything."""
    try:
        yield
    except ValueError as error:
        raise click.UsageError(str(error)) from None
