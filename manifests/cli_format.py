"""How every stylegen command reads its options and shows its help (every command in pipeline/cli/ uses
these classes, so `stylegen manifest ...` and `stylegen run ...` behave alike).

- A list option takes several values after one flag, as the README writes it: `--styles a b c` is read
  as `--styles a --styles b --styles c` (repeating the flag still works).
- Help shows arguments as `MANIFEST` (not `{manifest}`) and flags without a `<bool>` value, since
  `--keep-rejected` takes none.
"""

from __future__ import annotations

from typer.core import TyperArgument, TyperCommand, TyperGroup, TyperOption


def spread_list_options(args: list[str], list_options: set[str]) -> list[str]:
    """Repeat a list option's flag before each further value that follows it: ["--styles", "a", "b"]
    -> ["--styles", "a", "--styles", "b"]. A token starting with "-" ends the values; "--" ends all."""
    spread: list[str] = []
    reading, seen_first = None, False
    for index, token in enumerate(args):
        if token == "--":
            return spread + args[index:]
        if token.startswith("-") and token != "-":
            reading, seen_first = (token if token in list_options else None), False
        elif reading is not None:
            if seen_first:
                spread.append(reading)
            seen_first = True
        spread.append(token)
    return spread


class _PlainHelp:
    """Argument names in capitals and no value type after a flag, in the usage line and the help."""

    def _tidy(self, params) -> None:
        for param in params:
            if isinstance(param, TyperArgument) and param.metavar is None:
                param.metavar = param.name.upper()
            elif isinstance(param, TyperOption) and param.is_flag:
                param.metavar = ""  # rich help prints the metavar in place of "<bool>"

    def get_params(self, ctx):
        params = super().get_params(ctx)
        self._tidy(params)
        return params

    def collect_usage_pieces(self, ctx) -> list[str]:
        pieces = [self.options_metavar] if self.options_metavar else []
        for param in self.get_params(ctx):
            if isinstance(param, TyperArgument):
                name = param.metavar + ("..." if param.nargs != 1 else "")
                pieces.append(name if param.required else f"[{name}]")
        return pieces


class StylegenCommand(_PlainHelp, TyperCommand):
    def parse_args(self, ctx, args: list[str]) -> list[str]:
        names = {opt for p in self.params if isinstance(p, TyperOption) and p.multiple for opt in p.opts}
        return super().parse_args(ctx, spread_list_options(args, names) if names else args)


class StylegenGroup(_PlainHelp, TyperGroup):
    def collect_usage_pieces(self, ctx) -> list[str]:
        return [*super().collect_usage_pieces(ctx), self.subcommand_metavar]


# Off a terminal rich assumes 80 columns and cuts or wraps tables and long paths to fit; a pipe or a
# file has no width, so lines keep their length there.
PIPED_WIDTH = 4096


def make_console(stderr: bool = False, soft_wrap: bool = False):
    """A rich Console as wide as the terminal, and unlimited when piped."""
    from rich.console import Console

    console = Console(stderr=stderr, highlight=False, soft_wrap=soft_wrap)
    if not console.is_terminal:
        console.width = PIPED_WIDTH
    return console
