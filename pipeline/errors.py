"""The errors a user can fix. Each says what and where in one line; its class says the exit code.

Every error class a user can meet derives from UserError (ConfigError, RunRefused, ManifestError,
StorageError, PoolError, ...), keeping its older base (ValueError, RuntimeError) for the code that
catches that. The CLI catches UserError by type in one place (pipeline/cli/errors.py) and exits with
`exit_code`, printing `error: MESSAGE` without a traceback. Anything else is a bug and keeps its
traceback. The exit codes are README's contract: 1 bad manifest / storage / pool error, 2 bad config,
refused run or unreadable output, 143 / 130 stopped by a signal.

This module imports nothing, so every layer (manifests/ included) may derive from it.
"""

from __future__ import annotations


class UserError(Exception):
    """A mistake in the input, the config or the output the command was pointed at."""

    exit_code = 1
    label = "error"  # the line the CLI prints: `{label}: {message}`


class OutputError(UserError, ValueError):
    """An output (run.json, a shard parquet, a commit marker) cannot be read as a stylegen output."""

    exit_code = 2


class UsageError(UserError, ValueError):
    """A flag's value cannot be used as given (the message names the flag)."""

    exit_code = 2
