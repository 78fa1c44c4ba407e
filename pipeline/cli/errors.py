"""The one place where a command's user error (pipeline/errors.py) becomes one line and an exit code.

Every command is decorated with `exits_on_user_error`: a UserError raised inside it prints
`error: MESSAGE` on stderr (a stop prints `stylegen: MESSAGE`) and exits with the error's `exit_code`,
never with a traceback. Errors are recognised by type, so a renamed or new subclass keeps its code;
anything else is a bug and keeps its traceback. Only typer is imported up front (rich when printing).
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import typer

from pipeline.errors import UserError


def exits_on_user_error(
    command: Callable | None = None,
    *,
    exit_code: int | None = None,
    also: tuple[type[Exception], ...] = (),
) -> Callable:
    """Decorate a command (bare, or with options). `exit_code`: the code every error of this command exits
    with, whatever its class (the commands that read an existing output exit 2 for any problem with it,
    a storage error included). `also`: plain exception types this command's readers raise for a bad input
    (ValueError), shown like user errors; they exit with `exit_code`, else 1."""

    def decorate(function: Callable) -> Callable:
        @functools.wraps(function)  # typer reads the options from the wrapped signature
        def command_with_one_line_errors(*args, **kwargs):
            try:
                return function(*args, **kwargs)
            except (UserError, *also) as error:
                print_user_error(error)
                code = getattr(error, "exit_code", 1) if exit_code is None else exit_code
                raise typer.Exit(code) from None

        return command_with_one_line_errors

    return decorate if command is None else decorate(command)


def print_user_error(error: Exception) -> None:
    """`error: MESSAGE` on stderr, whole (a pipe gets one unbroken line; markup in MESSAGE is text)."""
    from rich.text import Text

    from manifests.cli_format import make_console

    label = getattr(error, "label", UserError.label)
    line = Text.assemble((f"{label}:", "bold red" if label == UserError.label else ""), " ", str(error))
    make_console(stderr=True, soft_wrap=True).print(line)
