"""What the command modules share: the user's error, commands whose arguments are added when parsed, option types."""

import argparse
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

Subcommands = argparse._SubParsersAction
"""What ``add_subparsers`` returns (argparse names its type nowhere public); command modules add commands to one."""


class UsageError(Exception):
    """What the user gave (an option, a file, a setting) cannot be used; ``qmri`` prints the message as one line."""


@contextmanager
def user_errors() -> Iterator[None]:
    """Turn the ValueError a library raises for what the user gave (its documented refusal) into a UsageError.

    Wrap only calls whose ValueError means bad input (a raw file, settings, a device name), so that a bug elsewhere
    keeps its traceback.
    """
    try:
        yield
    except ValueError as exc:
        raise UsageError(str(exc)) from exc


class CommandParser(argparse.ArgumentParser):
    """An argument parser whose arguments are added when it parses (``add_later``).

    Building the ``qmri`` parser then imports nothing a command does not need: the simulator's and the trainers'
    settings (and torch with them) load only when ``qmri simulate`` or ``qmri train`` is parsed.
    """

    _add_arguments: Callable[[argparse.ArgumentParser], None] | None = None

    def add_later(self, add_arguments: Callable[[argparse.ArgumentParser], None]) -> None:
        """Call ``add_arguments(self)`` when this parser first parses (a command line or ``--help``)."""
        self._add_arguments = add_arguments

    def parse_known_args(  # type: ignore[override]  # one signature for argparse's overloads
        self, args: Sequence[str] | None = None, namespace: argparse.Namespace | None = None
    ) -> tuple[argparse.Namespace, list[str]]:
        """Add the arguments if they are still to come, then parse as ``ArgumentParser`` does."""
        if self._add_arguments is not None:
            add, self._add_arguments = self._add_arguments, None
            add(self)
        return super().parse_known_args(args, namespace)


def add_command(
    commands: "Subcommands[CommandParser]",
    name: str,
    about: str,
    add_arguments: Callable[[argparse.ArgumentParser], None],
) -> None:
    """Add the command ``name``, whose arguments (and handler, as the ``run`` default) ``add_arguments`` adds on use."""
    commands.add_parser(name, help=about, description=about).add_later(add_arguments)


def port(text: str) -> int:
    """Return a TCP port number, or raise the error argparse prints for a bad option value."""
    value = positive_int(text)
    if value > 65535:
        raise argparse.ArgumentTypeError(f"a port is 1 to 65535, got {value}")
    return value


def positive_int(text: str) -> int:
    """Return a whole number of at least 1, or raise the error argparse prints for a bad option value."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a number of at least 1, got {value}")
    return value


def positive_float(text: str) -> float:
    """Return a positive finite number, or raise the error argparse prints for a bad option value."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not 0 < value < float("inf"):
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text!r}")
    return value


def folder(text: str) -> Path:
    """Return the path of an existing folder, or raise the error argparse prints for a bad option value."""
    path = Path(text)
    if not path.is_dir():
        raise argparse.ArgumentTypeError(f"{text} is not a folder")
    return path
