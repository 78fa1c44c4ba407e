"""The errors a user can fix. Each says what and where in one line; its class says the exit code.

The CLI catches UserError in one place (pipeline/cli/errors.py) and exits with `exit_code`, printing the
message without a traceback. Anything else is a bug and keeps its traceback.
"""

from __future__ import annotations


class UserError(Exception):
    """A mistake in the input, the config or the output the command was pointed at."""

    exit_code = 1


class OutputError(UserError, ValueError):
    """An output (run.json, a shard parquet, a commit marker) cannot be read as a stylegen output."""

    exit_code = 2
