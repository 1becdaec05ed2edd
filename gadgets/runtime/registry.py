"""The registry: the only gadgets a chain can name, each with its configuration class.

A chain's ``<classname>`` is looked up here and nowhere else, so a client's config text can never import
arbitrary Python (DESIGN.md, Errors and data safety).
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
    "gadgets.mrf",
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


Gadget = Callable[[GadgetConnection], None]


@dataclass(frozen=True)
class GadgetSpec:
    """A registered gadget: chain class name, the callable, its configuration class and one line of doc."""

    classname: str
    gadget: Gadget
    config: type[GadgetConfig]
    summary: str


_REGISTRY: dict[str, GadgetSpec] = {}


def register(classname: str, config: type[GadgetConfig]) -> Callable[[Gadget], Gadget]:
    """Return a decorator that registers a gadget function under ``classname``.

    Parameters
    ----------
    classname : The name chains use in ``<classname>``.
    config : The gadget's configuration dataclass (its properties).

    Returns
    -------
    The decorator; it returns the gadget unchanged so it also runs under gadgetron-python.
    """

    def decorate(gadget: Gadget) -> Gadget:
        if classname in _REGISTRY:
            raise ValueError(f"gadget class name {classname!r} registered twice")
        summary = (gadget.__doc__ or "").strip().splitlines()[0] if gadget.__doc__ else ""
        _REGISTRY[classname] = GadgetSpec(classname, gadget, config, summary)
        return gadget

    return decorate


def registered_gadgets() -> dict[str, GadgetSpec]:
    """Return every registered gadget by chain class name (imports the gadget modules on first use)."""
    for module in GADGET_MODULES:
        importlib.import_module(module)
    return dict(_REGISTRY)
