"""Flags made from settings dataclasses: one per field, its type, default and documentation from the dataclass."""

import argparse
import shlex
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import pytest

from gadgets.cli import build_parser
from gadgets.cli.arguments import UsageError
from gadgets.cli.dataclass_flags import add_dataclass_flags, field_docs
from qmri_models.simulation.mrf_scan import MrfScanSettings
from qmri_models.simulation.scan import ScanSettings


@dataclass(frozen=True)
class Base:
    """Settings with documented fields.

    Attributes
    ----------
    ratio : Fraction of something, from the docstring.
    """

    count: int = 3
    """How many, from the string after the field."""
    ratio: float = 0.5


@dataclass(frozen=True)
class Settings(Base):
    """More settings; ``count`` keeps its base's documentation."""

    name: str = "a"
    mode: Literal["fast", "slow"] = "fast"
    """The ``mode``, 100% documented."""
    verbose: bool = False
    sizes: tuple[int, ...] = (1, 2)
    span: tuple[float, float] = (0.5, 2.0)
    limit: float | None = None
    folder: Path = Path("out")
    tags: tuple[str, ...] = field(default_factory=tuple)
    n_coils: int = 8

    def __post_init__(self) -> None:
        if self.count < 1:
            raise ValueError(f"count must be at least 1, got {self.count}")


FIELDS = ("count", "ratio", "name", "mode", "verbose", "sizes", "span", "limit", "folder", "n_coils")


def parser_and_flags() -> tuple[argparse.ArgumentParser, object]:
    parser = argparse.ArgumentParser(prog="test", exit_on_error=False)
    flags = add_dataclass_flags(parser, Settings, FIELDS, flag_names={"n_coils": "coils"}, help_texts={"name": "who"})
    return parser, flags


def test_no_flags_build_the_defaults() -> None:
    parser, flags = parser_and_flags()
    assert flags.build(parser.parse_args([])) == Settings()


def test_every_type_reads_its_flag() -> None:
    parser, flags = parser_and_flags()
    args = parser.parse_args(
        shlex.split(
            "--count 5 --ratio 0.25 --name b --mode slow --verbose --sizes 4 5 6 --span 1 3 --limit 2.5 --folder x "
            "--coils 2"
        )
    )
    expected = Settings(
        count=5,
        ratio=0.25,
        name="b",
        mode="slow",
        verbose=True,
        sizes=(4, 5, 6),
        span=(1.0, 3.0),
        limit=2.5,
        folder=Path("x"),
        n_coils=2,
    )
    assert flags.build(args) == expected
    assert flags.build(parser.parse_args(["--no-verbose"]), tags=("t",)) == Settings(tags=("t",))


def test_help_is_the_field_documentation_with_the_default() -> None:
    parser, _ = parser_and_flags()
    helps = {action.dest: action.help for action in parser._actions}
    assert helps["count"] == "How many, from the string after the field (default 3)"
    assert helps["ratio"] == "Fraction of something, from the docstring (default 0.5)"
    assert helps["mode"] == "The mode, 100%% documented (default fast)"  # argparse formats help with %
    assert helps["name"] == "who (default a)"
    assert helps["sizes"] == "(default 1 2)"
    assert helps["span"] == "(default 0.5 2.0)"
    with pytest.raises(argparse.ArgumentError, match="expected 2 arguments"):
        parser.parse_args(["--span", "1"])
    assert helps["limit"] == ""
    assert "100% documented (default fast)" in " ".join(parser.format_help().split())
    assert field_docs(Settings)["count"] == "How many, from the string after the field."


def test_flag_names_types_and_choices() -> None:
    parser, _ = parser_and_flags()
    by_dest = {action.dest: action for action in parser._actions}
    assert by_dest["n_coils"].option_strings == ["--coils"]
    assert by_dest["mode"].choices == ["fast", "slow"]
    assert by_dest["sizes"].nargs == "+"
    assert by_dest["limit"].type is float
    assert by_dest["verbose"].option_strings == ["--verbose", "--no-verbose"]
    with pytest.raises(argparse.ArgumentError, match="invalid choice: 'medium'"):
        parser.parse_args(["--mode", "medium"])


def test_settings_the_dataclass_refuses_are_the_users_error() -> None:
    parser, flags = parser_and_flags()
    with pytest.raises(UsageError, match="count must be at least 1, got 0"):
        flags.build(parser.parse_args(["--count", "0"]))


def test_what_has_no_flag_form_is_refused() -> None:
    @dataclass
    class Odd:
        mapping: dict[str, int] = field(default_factory=dict)

    parser = argparse.ArgumentParser()
    with pytest.raises(TypeError, match=r"Odd\.mapping: no command-line form"):
        add_dataclass_flags(parser, Odd, ["mapping"])
    with pytest.raises(TypeError, match="Settings has no field nope"):
        add_dataclass_flags(parser, Settings, ["nope"])
    with pytest.raises(TypeError, match="is not a dataclass"):
        add_dataclass_flags(parser, dict, [])


def flag_values(argv: list[str], not_fields: set[str]) -> dict[str, object]:
    args = vars(build_parser().parse_args(argv))
    return {
        name: value for name, value in args.items() if name not in {"command", "run", "verbose", "debug", *not_fields}
    }


@pytest.mark.parametrize("contrast", ["molli", "t2prep", "ir"])
def test_simulate_defaults_are_the_scan_settings(contrast: str) -> None:
    """``qmri simulate CONTRAST`` writes no default of its own: each flag it leaves out is the settings' default."""
    values = flag_values(["simulate", contrast, "--out", "x.h5"], {"contrast", "out"})
    assert set(values) >= {"matrix", "n_coils", "acceleration", "acs_fraction", "snr", "seed", "n_slices", "phantom"}
    expected = ScanSettings(contrast=contrast)
    assert values == {name: getattr(expected, name) for name in values}


def test_simulate_mrf_defaults_are_the_mrf_settings() -> None:
    values = flag_values(["simulate", "mrf", "--out", "x.h5"], {"contrast", "out"})
    assert set(values) >= {"matrix", "n_coils", "n_frames_full", "truncation", "n_interleaves", "ordering", "snr"}
    expected = MrfScanSettings()
    assert values == {name: getattr(expected, name) for name in values}
    assert values["matrix"] != ScanSettings(contrast="molli").matrix  # each contrast its own defaults


def test_simulate_keeps_its_flag_names() -> None:
    """The flags users already type (README, Makefile) parse into the settings' fields."""
    args = build_parser().parse_args(
        shlex.split("simulate molli --acceleration 4 --coils 4 --slices 2 --matrix 64 --phantom spheres --out m.h5")
    )
    assert (args.acceleration, args.n_coils, args.n_slices, args.matrix, args.phantom) == (4, 4, 2, 64, "spheres")
    args = build_parser().parse_args(
        shlex.split("simulate mrf --frames 20 --interleaves 6 --ordering golden --out f.h5")
    )
    assert (args.n_frames_full, args.n_interleaves, args.ordering) == (20, 6, "golden")


def test_parsing_a_command_loads_only_that_command() -> None:
    """Building the parser and parsing ``check-chain`` imports neither the simulator nor the trainers (nor torch)."""
    code = (
        "import sys; from gadgets.cli import build_parser; build_parser().parse_args(['check-chain', 'x.xml']); "
        "print(sorted(m for m in ('torch', 'qmri_models.simulation.scan', 'qmri_models.training.configs') "
        "if m in sys.modules))"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120)
    assert result.stdout.strip() == "[]"
