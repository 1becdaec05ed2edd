"""The registry: the only gadgets a chain can name, each with its configuration class and the items it takes and sends.

A chain's ``<classname>`` is looked up here and nowhere else, so a client's config text can never import
arbitrary Python (DESIGN.md, Errors and data safety). What a gadget ``consumes`` and ``produces`` lets
``qmri check-chain`` find a miswired chain before any data arrives (``gadgets.runtime.wiring``).
"""

import importlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, Protocol

from gadgets.runtime.config import GadgetConfig

GADGET_MODULES = (
    "gadgets.basic",
    "gadgets.noise",
    "gadgets.buffering",
    "gadgets.recon",
    "gadgets.fitting",
    "gadgets.puq_recon",
    "gadgets.puq_fit",
    "gadgets.diffusor",
    "gadgets.mrf",
    "gadgets.structure_report",
    "gadgets.intervals",
    "gadgets.output",
    "gadgets.dicom_output",
)
"""Modules whose gadgets are registered; importing them fills the registry."""


class GadgetConnection(Protocol):
    """The gadget contract (gadgetron-python's): iterate items, ``send`` downstream, read ``header``."""

    header: Any

    def __iter__(self) -> Iterator[Any]: ...

    def send(self, item: Any) -> None:
        """Send an item downstream."""

    def filter(self, predicate: type | Callable[[Any], bool]) -> None:
        """Iterate only items of this type (or satisfying this predicate); the rest pass downstream untouched."""


Gadget = Callable[[GadgetConnection], None]


@dataclass(frozen=True)
class GadgetSpec:
    """A registered gadget: chain class name, the callable, its configuration class, what it takes and sends."""

    classname: str
    gadget: Gadget
    config: type[GadgetConfig]
    summary: str
    consumes: tuple[type, ...]
    """Item types the gadget handles; everything else passes it untouched. Empty: it handles nothing (pass-through)."""
    produces: tuple[type, ...]
    """Item types it may send in place of what it consumes, under some configuration."""
    sends_under: Callable[[Any], tuple[type, ...]] | None = None
    """The types it sends under a given configuration, when properties decide (None: all of ``produces``)."""

    def sends(self, config: GadgetConfig) -> tuple[type, ...]:
        """Return the item types the gadget sends under ``config``."""
        return self.produces if self.sends_under is None else self.sends_under(config)


_REGISTRY: dict[str, GadgetSpec] = {}


def register(
    classname: str,
    config: type[GadgetConfig],
    *,
    consumes: tuple[type, ...],
    produces: tuple[type, ...],
    sends_under: Callable[[Any], tuple[type, ...]] | None = None,
) -> Callable[[Gadget], Gadget]:
    """Return a decorator that registers a gadget function under ``classname``.

    Parameters
    ----------
    classname : The name chains use in ``<classname>``.
    config : The gadget's configuration dataclass (its properties).
    consumes : Item types the gadget handles (it passes the rest on); empty for a gadget that handles none.
    produces : Item types it may send for them.
    sends_under : The types it sends under a configuration, when properties decide (a subset of ``produces``).

    Returns
    -------
    The decorator; it returns the gadget unchanged so it also runs under gadgetron-python.
    """

    def decorate(gadget: Gadget) -> Gadget:
        if classname in _REGISTRY:
            raise ValueError(f"gadget class name {classname!r} registered twice")
        summary = (gadget.__doc__ or "").strip().splitlines()[0] if gadget.__doc__ else ""
        _REGISTRY[classname] = GadgetSpec(classname, gadget, config, summary, consumes, produces, sends_under)
        return gadget

    return decorate


def of_types(*types: type) -> Callable[[Any], bool]:
    """Return a ``connection.filter`` predicate that accepts instances of any of ``types``."""
    return lambda item: isinstance(item, types)


def registered_gadgets() -> dict[str, GadgetSpec]:
    """Return every registered gadget by chain class name (imports the gadget modules on first use)."""
    for module in GADGET_MODULES:
        importlib.import_module(module)
    return dict(_REGISTRY)
