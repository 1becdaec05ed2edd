"""Typed gadget properties: one frozen dataclass per gadget, parsed once from the chain's strings.

A field is declared with :func:`prop`, which holds its default and its one-line doc; the field's annotation gives
its type (``int``, ``float``, ``bool``, ``str`` or a ``Literal`` of allowed strings). ``qmri check-chain`` and
``qmri gadgets`` read the same declarations, so what a physicist reads is what the code parses.

Trust: a property that names a path, a host, a port, a model file or a cache, or that caps what one stream may
hold, is a *site setting* (``prop(..., site=True)``). Site settings come from the site (shipped chains, the
server's site chain folder, server options), never from a client: a chain that arrives as a client's CONFIG_TEXT
may leave a site setting at its default or pick one of its ``client_choices`` (e.g. the shipped weights
``t1``/``t2``), and anything else is refused before any data is read (:meth:`GadgetConfig.client_violations`).
"""

import dataclasses
import math
import typing
import xml.etree.ElementTree as ET
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar, Literal, Self

_TRUE = frozenset({"true", "1", "yes", "on"})
MAX_TEXT_CHARS = 256
"""Longest text a property may hold (names, AE titles, descriptions, paths); longer is refused."""
_FALSE = frozenset({"false", "0", "no", "off"})


class PropertyError(ValueError):
    """A chain property that is unknown or whose value does not parse; names the property."""

    def __init__(self, name: str, message: str) -> None:
        super().__init__(f"property '{name}': {message}")
        self.property_name = name


def prop(
    default: Any,
    doc: str,
    *,
    minimum: float | None = None,
    maximum: float | None = None,
    site: bool = False,
    client_choices: tuple[str, ...] = (),
) -> Any:
    """Return a dataclass field for a gadget property with its default, its one-line doc and optional bounds.

    Parameters
    ----------
    default : The default value, written once here.
    doc : One line for physicists: what it does, with its unit.
    minimum : Smallest allowed value for numbers.
    maximum : Largest allowed value for numbers.
    site : The property names a path, host, port, model file or cache, or caps a stream's resources: only the site
        may set it (module docstring).
    client_choices : Values of a site property that a client's chain may pick nevertheless (shipped model names).

    Returns
    -------
    A ``dataclasses.field``.
    """
    metadata = {"doc": doc, "minimum": minimum, "maximum": maximum, "site": site, "client_choices": client_choices}
    return dataclasses.field(default=default, metadata=metadata)


@dataclass(frozen=True)
class PropertyDoc:
    """How one property reads in ``qmri gadgets``: name, type, default, doc."""

    name: str
    type_name: str
    default: Any
    doc: str
    site: bool = False
    """Only the site may set it (not a client's CONFIG_TEXT chain)."""


@dataclass(frozen=True)
class GadgetConfig:
    """Base of every gadget's configuration dataclass."""

    _types: ClassVar[dict[str, Any]]

    @classmethod
    def from_properties(cls, properties: Mapping[str, str]) -> Self:
        """Return the configuration parsed from property strings; unknown names and bad values raise.

        Parameters
        ----------
        properties : Property name to string value, as written in the chain.

        Returns
        -------
        The configuration, defaults filled in.

        Raises
        ------
        PropertyError
            For an unknown property or a value of the wrong type or out of range.
        """
        fields = {f.name: f for f in dataclasses.fields(cls)}
        hints = typing.get_type_hints(cls)
        values = {}
        for name, text in properties.items():
            if name not in fields:
                known = ", ".join(sorted(fields)) or "none"
                raise PropertyError(name, f"unknown property (this gadget has: {known})")
            values[name] = _parse(name, text, hints[name], fields[name].metadata)
        return cls(**values)

    @classmethod
    def from_connection(cls, connection: Any) -> Self:
        """Return the configuration of the gadget that ``connection`` belongs to.

        Works on our runtime's connection (``parameters``) and on gadgetron-python's (``config`` XML), so the same
        gadget runs under a real Gadgetron.

        Parameters
        ----------
        connection : The gadget's connection.

        Returns
        -------
        The configuration.
        """
        parameters = getattr(connection, "parameters", None)
        if parameters is None:
            config = getattr(connection, "config", None)
            parameters = properties_from_xml(config) if config is not None else {}
        return cls.from_properties(parameters)

    @classmethod
    def describe(cls) -> list[PropertyDoc]:
        """Return the documentation of every property, in declaration order."""
        hints = typing.get_type_hints(cls)
        return [
            PropertyDoc(
                f.name, _type_name(hints[f.name]), f.default, f.metadata.get("doc", ""), bool(f.metadata.get("site"))
            )
            for f in dataclasses.fields(cls)
        ]

    def client_violations(self) -> list[str]:
        """Return the site properties this configuration sets that a client's chain may not set (empty when none).

        A site property left at its default, or set to one of its ``client_choices``, is no violation.
        """
        return [
            f.name
            for f in dataclasses.fields(self)
            if f.metadata.get("site")
            and getattr(self, f.name) != f.default
            and getattr(self, f.name) not in f.metadata.get("client_choices", ())
        ]


def properties_from_xml(element: ET.Element) -> dict[str, str]:
    """Return the ``<property>`` name/value pairs under an XML element, in both Gadgetron forms.

    Accepts ``<property name="n" value="v"/>`` and the legacy ``<property><name>n</name><value>v</value></property>``.

    Parameters
    ----------
    element : A ``<gadget>`` (or gadgetron-python ``<configuration>``) element.

    Returns
    -------
    Property name to string value.

    Raises
    ------
    PropertyError
        For a property without a name or given twice.
    """
    properties: dict[str, str] = {}
    for node in element.findall("property"):
        name = node.get("name")
        value = node.get("value")
        if name is None:
            name = (node.findtext("name") or "").strip()
            value = node.findtext("value")
        if not name:
            raise PropertyError("?", "a <property> has no name")
        if name in properties:
            raise PropertyError(name, "given more than once")
        properties[name] = (value or "").strip()
    return properties


def _parse(name: str, text: str, kind: Any, metadata: Mapping[str, Any]) -> Any:
    """Return ``text`` converted to the property's type, checked against its bounds."""
    if typing.get_origin(kind) is Literal:
        choices = typing.get_args(kind)
        if text not in choices:
            raise PropertyError(name, f"expects one of {', '.join(map(str, choices))}; got {_shown(text)}")
        return text
    if kind is bool:
        if text.lower() in _TRUE:
            return True
        if text.lower() in _FALSE:
            return False
        raise PropertyError(name, f"expects true or false; got {_shown(text)}")
    if kind in (int, float):
        try:
            value = kind(text)
        except ValueError:
            raise PropertyError(name, f"expects {_type_name(kind)}; got {_shown(text)}") from None
        if not math.isfinite(value):
            raise PropertyError(name, f"expects a finite {_type_name(kind)}; got {_shown(text)}")
        lo, hi = metadata.get("minimum"), metadata.get("maximum")
        if (lo is not None and value < lo) or (hi is not None and value > hi):
            raise PropertyError(name, f"must be in [{lo}, {hi}]; got {value}")
        return value
    if len(text) > MAX_TEXT_CHARS:
        raise PropertyError(name, f"is {len(text)} characters long; at most {MAX_TEXT_CHARS} are allowed")
    return text


def _shown(text: str) -> str:
    """Return a property value as an error message quotes it: at most 40 characters, quoted."""
    return repr(text if len(text) <= 40 else text[:37] + "...")


def _type_name(kind: Any) -> str:
    """Return how a property type reads for people: ``integer``, ``number``, ``true|false``, ``a|b``, ``text``."""
    if typing.get_origin(kind) is Literal:
        return "|".join(map(str, typing.get_args(kind)))
    return {int: "integer", float: "number", bool: "true|false"}.get(kind, "text")
