"""Typed chains: whether each gadget gets something it handles, and whether what leaves the chain can leave.

Every registered gadget says what it ``consumes`` and ``produces`` (``gadgets.runtime.registry.register``); items it
does not consume pass it untouched. So the types flowing after each gadget follow from the chain alone, and a
miswired chain (a fit before any reconstruction, maps with no gadget to turn them into images) is refused when the
chain is read, naming the two gadgets, instead of mid-scan.
"""

from collections.abc import Sequence
from dataclasses import dataclass

import ismrmrd

from gadgets.runtime.registry import registered_gadgets


@dataclass(frozen=True)
class Boundary:
    """What enters a chain and what may leave it, and what is at the other end (for messages)."""

    arriving: tuple[type, ...]
    """Item types that arrive before the first gadget."""
    leaving: tuple[type, ...]
    """Item types that may leave after the last gadget."""
    peer: str
    """Who receives what leaves (``the client``, ``Gadgetron``)."""


CLIENT = Boundary(
    arriving=(ismrmrd.Acquisition, ismrmrd.Waveform, ismrmrd.Image),
    leaving=(ismrmrd.Acquisition, ismrmrd.Waveform, ismrmrd.Image, str),
    peer="the client",
)
"""A chain run by ``qmri serve``, ``qmri replay`` or stream mode: MRD messages in and out (text for warnings)."""


@dataclass(frozen=True)
class Node:
    """One gadget of a chain as the wiring check sees it."""

    name: str
    """Its ``<name>`` in the chain."""
    classname: str
    consumes: tuple[type, ...] | None
    """What it handles (empty: nothing, everything passes); None when unknown (a Gadgetron gadget we do not know)."""
    produces: tuple[type, ...]
    """What it may send for what it handles, under some configuration."""
    sends: tuple[type, ...]
    """What it sends under its configuration in this chain."""

    def __str__(self) -> str:
        return f"'{self.name}' ({self.classname})"


@dataclass
class Flow:
    """The item types flowing at one point of a chain, each with the gadget that sent it (None: the input)."""

    actual: dict[type, Node | None]
    """What flows under the chain's properties."""
    possible: set[type]
    """What could flow under some properties of the gadgets before."""
    last: Node | None = None
    """The gadget just before this point, for messages."""

    @classmethod
    def arriving(cls, kinds: tuple[type, ...]) -> "Flow":
        """Return the flow before a chain's first gadget."""
        return cls(dict.fromkeys(kinds), set(kinds))


def check_wiring(nodes: Sequence[Node], boundary: Boundary) -> None:
    """Raise ValueError unless every gadget can get an item it handles and only ``boundary.leaving`` types leave.

    A gadget may wait for items that an earlier gadget sends only under some properties (the phase images a fit
    passes on with ``send_phase_images=true``); what leaves is checked under the chain's actual properties.

    Parameters
    ----------
    nodes : The chain's gadgets in order.
    boundary : What arrives before the first gadget and what may leave after the last.

    Raises
    ------
    ValueError
        Naming the gadget that gets nothing it handles and the gadget before it with what that one sends, or the
        gadget whose items cannot leave the chain and which gadgets would turn them into something that can.
    """
    check_leaving(flow_through(nodes, Flow.arriving(boundary.arriving)), boundary)


def flow_through(nodes: Sequence[Node], flow: Flow | None) -> Flow | None:
    """Return what flows after ``nodes`` given what flows before them (None: unknown, after a gadget we do not know).

    Raises
    ------
    ValueError
        Naming a gadget that can get nothing it handles and the gadget before it.
    """
    for node in nodes:
        if node.consumes is None or flow is None:
            flow = None
            continue
        if node.consumes and not any(issubclass(kind, node.consumes) for kind in flow.possible):
            before = "the stream's input" if flow.last is None else f"gadget {flow.last}"
            raise ValueError(
                f"gadget {node} takes {_names(node.consumes)}, but nothing before it sends one: {before} "
                f"passes on {_names(tuple(flow.actual))}"
            )
        actual = {kind: sender for kind, sender in flow.actual.items() if not issubclass(kind, node.consumes)}
        actual.update(dict.fromkeys(node.sends, node))
        possible = {kind for kind in flow.possible if not issubclass(kind, node.consumes)} | set(node.produces)
        flow = Flow(actual, possible, node)
    return flow


def check_leaving(flow: Flow | None, boundary: Boundary) -> None:
    """Raise ValueError if a type that cannot leave for ``boundary.peer`` flows (nothing is known after None).

    Raises
    ------
    ValueError
        Naming the gadget that sends it and the gadgets that would take it.
    """
    if flow is None:
        return
    stranded = [kind for kind in flow.actual if not issubclass(kind, boundary.leaving)]
    if stranded:
        kind = stranded[0]
        takers = sorted(s.classname for s in registered_gadgets().values() if issubclass(kind, s.consumes or ()))
        remedy = f"add a gadget that takes it after it ({', '.join(takers)})" if takers else "no gadget takes it"
        raise ValueError(
            f"gadget {flow.actual[kind]} sends {kind.__name__}, which cannot leave the chain for {boundary.peer} "
            f"(only {_names(boundary.leaving)} can); {remedy}"
        )


def _names(kinds: tuple[type, ...]) -> str:
    """Return type names for a message: ``SliceBuffer, Waveform``."""
    return ", ".join(kind.__name__ for kind in kinds) or "nothing"
