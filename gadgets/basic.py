"""Gadgets that move items without changing them."""

from dataclasses import dataclass

from gadgets.runtime.config import GadgetConfig
from gadgets.runtime.registry import GadgetConnection, register


@dataclass(frozen=True)
class PassThroughConfig(GadgetConfig):
    """PassThroughGadget has no properties."""


@register("PassThroughGadget", PassThroughConfig, consumes=(), produces=())
def pass_through(connection: GadgetConnection) -> None:
    """Send every item on unchanged (protocol and throughput tests, chain scaffolding)."""
    for item in connection:
        connection.send(item)
