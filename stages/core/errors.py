"""The one exception a stage raises for bad data or a failed run (exit code 1)."""

from __future__ import annotations

import click


class StageError(click.ClickException):
    """A failure of the data or the run; the message names the file and the fix."""

    exit_code = 1

    def format_message(self) -> str:
        return self.message
