"""Command-line flags made from a settings dataclass, so every default is written once: in the dataclass.

``add_dataclass_flags`` adds one flag per chosen field (``--field-name``, or a name of its own): the type from the
annotation (``int``, ``float``, ``str``, ``Path``, ``bool`` as ``--x/--no-x``, a ``Literal`` as choices, ``tuple[X,
...]`` as one or more values, ``X | None``), the default from the field, the help from the field's documentation (the
string literal after it in the class body, else its line in the docstring's ``Attributes`` section). What it returns
builds the dataclass from the parsed arguments; the dataclass's own ValueError (its validation) becomes a UsageError.
"""

import argparse
import ast
import dataclasses
import inspect
import itertools
import re
import textwrap
import types
import typing
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Generic, Literal, TypeVar

from gadgets.cli.arguments import UsageError

T = TypeVar("T")

_ATTRIBUTE_LINE = re.compile(r"^(\w+) : (.+)$")


@dataclass(frozen=True)
class DataclassFlags(Generic[T]):
    """The flags of a dataclass's fields on one parser; ``build`` makes the dataclass from parsed arguments."""

    cls: type[T]
    fields: tuple[str, ...]
    """The fields that have a flag; each is the flag's argparse destination."""

    def build(self, args: argparse.Namespace, **values: Any) -> T:
        """Return the dataclass of the parsed flags and ``values`` (fields without a flag, or computed ones).

        Raises
        ------
        UsageError
            If the dataclass refuses the settings (its ValueError, which names the field).
        """
        flagged = {name: _field_value(getattr(args, name)) for name in self.fields}
        try:
            return self.cls(**flagged, **values)
        except ValueError as exc:
            raise UsageError(str(exc)) from exc


def add_dataclass_flags(
    parser: argparse.ArgumentParser,
    cls: type[T],
    fields: Sequence[str],
    *,
    flag_names: Mapping[str, str] | None = None,
    help_texts: Mapping[str, str] | None = None,
    names: Mapping[str, object] | None = None,
) -> DataclassFlags[T]:
    """Add a flag to ``parser`` for each of ``fields`` of the dataclass ``cls``.

    Parameters
    ----------
    parser : Where the flags go.
    cls : A dataclass.
    fields : The fields that get a flag, in the order of the help.
    flag_names : A field's flag name without the dashes where it is not the field's name (``n_coils`` -> ``coils``).
    help_texts : A field's help where its documentation is missing or says too little for the command line.
    names : Names the annotations use that their module imports only for type checking (``{"MapName": MapName}``).

    Returns
    -------
    The flags; their ``build`` makes ``cls`` from the parsed arguments.

    Raises
    ------
    TypeError
        If ``cls`` is not a dataclass, a field is not one of its fields, or a field's type has no flag form.
    """
    if not (isinstance(cls, type) and dataclasses.is_dataclass(cls)):
        raise TypeError(f"{cls!r} is not a dataclass")
    by_name = {f.name: f for f in dataclasses.fields(cls)}
    unknown = [name for name in fields if name not in by_name]
    if unknown:
        raise TypeError(f"{cls.__name__} has no field {', '.join(unknown)} (fields: {', '.join(by_name)})")
    hints = typing.get_type_hints(cls, localns=dict(names or {}))
    docs = field_docs(cls)
    for name in fields:
        field = by_name[name]
        flag = (flag_names or {}).get(name, name).replace("_", "-")
        kwargs = _flag_form(hints[name], where=f"{cls.__name__}.{name}")
        text = ((help_texts or {}).get(name) or docs.get(name, "")).removesuffix(".")
        default = _default(field)
        if default is dataclasses.MISSING:
            kwargs["required"] = True
        else:
            kwargs["default"] = default
            if default is not None and kwargs.get("action") is not argparse.BooleanOptionalAction:
                text = f"{text} (default {_shown(default)})".strip()
        if "choices" not in kwargs and "action" not in kwargs:
            kwargs["metavar"] = flag.upper().replace("-", "_")
        parser.add_argument(f"--{flag}", dest=name, help=text.replace("%", "%%"), **kwargs)
    return DataclassFlags(cls, tuple(fields))


def field_docs(cls: type) -> dict[str, str]:
    """Return each documented field's documentation of a dataclass, its own class's over its bases'.

    A field's documentation is the string literal after it in the class body, else its line in the class docstring's
    numpy ``Attributes`` section (``name : text``); reST literals lose their backquotes.
    """
    docs: dict[str, str] = {}
    for klass in reversed(cls.__mro__):
        if dataclasses.is_dataclass(klass):
            docs |= _attributes_section(inspect.getdoc(klass) or "")
            docs |= _field_strings(klass)
    return {name: " ".join(doc.replace("``", "").split()) for name, doc in docs.items()}


def _field_strings(klass: type) -> dict[str, str]:
    """Return the string literal that follows each annotated field in the class body (none without the source)."""
    try:
        source = textwrap.dedent(inspect.getsource(klass))
    except (OSError, TypeError):  # defined where no source is kept (an interpreter session, a frozen build)
        return {}
    body = next(node for node in ast.parse(source).body if isinstance(node, ast.ClassDef)).body
    return {
        node.target.id: after.value.value
        for node, after in itertools.pairwise(body)
        if isinstance(node, ast.AnnAssign)
        and isinstance(node.target, ast.Name)
        and isinstance(after, ast.Expr)
        and isinstance(after.value, ast.Constant)
        and isinstance(after.value.value, str)
    }


def _attributes_section(doc: str) -> dict[str, str]:
    """Return the ``name : text`` lines of a numpy docstring's ``Attributes`` section."""
    _, found, rest = doc.partition("\nAttributes\n----------\n")
    section = rest.split("\n\n", 1)[0] if found else ""
    matches = (_ATTRIBUTE_LINE.match(line.strip()) for line in section.splitlines())
    return {m[1]: m[2] for m in matches if m is not None}


def _flag_form(hint: Any, *, where: str) -> dict[str, Any]:
    """Return the ``add_argument`` keywords that read a value of type ``hint``."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType) and type(None) in args and len(args) == 2:
        return _flag_form(next(a for a in args if a is not type(None)), where=where)
    if origin is Literal:
        return {"choices": list(args), "type": type(args[0])}
    if hint is bool:
        return {"action": argparse.BooleanOptionalAction}
    if origin is tuple and len(args) == 2 and args[1] is Ellipsis and args[0] in (int, float, str, Path):
        return {"nargs": "+", "type": args[0]}
    if origin is tuple and args and all(a is args[0] for a in args) and args[0] in (int, float, str, Path):
        return {"nargs": len(args), "type": args[0]}
    if hint in (int, float, str, Path):
        return {"type": hint}
    raise TypeError(f"{where}: no command-line form for type {hint!r}")


def _default(field: dataclasses.Field[Any]) -> Any:
    """Return the field's default (a factory's product), or ``dataclasses.MISSING`` when it has none."""
    if field.default_factory is not dataclasses.MISSING:
        return field.default_factory()
    return field.default


def _field_value(value: Any) -> Any:
    """Return a parsed flag value as the dataclass holds it: several values as a tuple."""
    return tuple(value) if isinstance(value, list) else value


def _shown(default: Any) -> str:
    """Return a default as the command line spells it."""
    return " ".join(map(str, default)) if isinstance(default, tuple) else str(default)
