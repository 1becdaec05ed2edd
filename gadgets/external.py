"""Our chains and gadgets inside a real Gadgetron, as external Python gadgets.

Gadgetron starts an external gadget as ``python -m gadgetron PORT MODULE TARGET`` (or connects to one that listens)
and sends it its ``<configuration>``, the ISMRMRD header, then the items its stream has at that point. Two targets
of this module do the work (README, "Inside Gadgetron")::

    <external>
      <execute name="gadgets.external" target="chain" type="python"/>
      <configuration>
        <property name="chain" value="t1_molli"/>            a shipped chain, by name
      </configuration>
    </external>

    <external>
      <execute name="gadgets.external" target="chain" type="python"/>
      <configuration>
        <stream> <gadget> ... our gadgets and their properties ... </gadget> </stream>
      </configuration>
    </external>

and every registered gadget is a target of its own (``target="ParameterFitGadget"``, properties in the
configuration). What Gadgetron hands over (Acquisitions, ``ReconData`` from BucketToBufferGadget, ``ImageArray`` from
its reconstructions) is what our gadgets take; what leaves is converted to Gadgetron's types
(``gadgets.gadgetron_types``), so rich items (MC samples, per-phase uncertainty) never cross the process boundary.
The configuration is the site's (a file in Gadgetron's configuration folder), so it may set site properties.
"""

import logging
import xml.etree.ElementTree as ET
from collections.abc import Callable
from pathlib import Path
from typing import Any

import ismrmrd
from gadgetron.types.image_array import ImageArray
from gadgetron.types.recon_data import ReconData

from gadgets.gadgetron_types import phase_images_to_image_array, slice_buffer_to_recon_data
from gadgets.items import PhaseImages, SliceBuffer
from gadgets.runtime.chain import Chain, ChainError, Stage, parse_chain, read_xml, resolve_chain
from gadgets.runtime.config import PropertyError, properties_from_xml
from gadgets.runtime.pipeline import run_chain
from gadgets.runtime.registry import registered_gadgets
from gadgets.runtime.wiring import Boundary

log = logging.getLogger(__name__)

EXTERNAL_MODULE = "gadgets.external"
"""This module's name, as a Gadgetron configuration's ``<execute name=...>`` gives it."""
GADGETRON = Boundary(
    arriving=(ismrmrd.Acquisition, ismrmrd.Waveform, ismrmrd.Image, ReconData, ImageArray),
    leaving=(
        ismrmrd.Acquisition,
        ismrmrd.Waveform,
        ismrmrd.Image,
        ReconData,
        ImageArray,
        SliceBuffer,
        PhaseImages,
        str,
    ),
    peer="Gadgetron",
)
"""What Gadgetron's stream can hand an external gadget, and what can go back (our slice k-space and phase images
as ReconData and ImageArray; text is logged, as the external connection carries none)."""

_CHATTY_LIBRARIES = ("numba", "matplotlib", "PIL", "h5py", "torch")
"""Libraries whose DEBUG messages are for their developers, not for a Gadgetron log."""
_CHAIN_PROPERTY = "chain"
"""The ``chain`` target's property naming a shipped chain."""
_OUTPUT_PROPERTY = "output"
"""The ``chain`` target's property naming the folder for the files a chain writes (DICOM); default: the cwd."""


def chain(connection: Any) -> None:
    """Run one of our chains on a Gadgetron external connection (the ``chain`` target).

    Parameters
    ----------
    connection : gadgetron-python's connection: ``config`` (the external's configuration element), ``header``,
        items by iteration, ``send``.

    Raises
    ------
    ChainError
        If the configuration names no chain, an unknown one, or a chain that cannot run here.
    """
    run_external(external_chain(_configuration_text(connection)), connection)


def external_chain(configuration: str, *, source: str = "external configuration") -> Chain:
    """Return the chain an external gadget's configuration describes: a shipped chain by name, or a ``<stream>``.

    Parameters
    ----------
    configuration : The external's ``<configuration>`` element as text.
    source : Where it came from, for messages.

    Returns
    -------
    The validated chain, wired for what Gadgetron hands over and takes back.

    Raises
    ------
    ChainError
        If the text is neither, or the chain is invalid.
    """
    root = _configuration_root(configuration, source)
    if root.find("stream") is not None:
        if root.find("version") is None:
            version = ET.Element("version")
            version.text = "2"
            root.insert(0, version)
        for node in root.findall("property"):
            root.remove(node)
        text = ET.tostring(root, encoding="unicode")
        return parse_chain(text, source=source, site=True, boundary=GADGETRON)
    try:
        properties = properties_from_xml(root)
    except PropertyError as exc:
        raise ChainError(f"{source}: {exc}") from exc
    name = properties.get(_CHAIN_PROPERTY, "").strip()
    if not name:
        raise ChainError(
            f'{source}: name a shipped chain (<property name="chain" value="t1_molli"/>) or list '
            "our gadgets in a <stream>"
        )
    shipped = resolve_chain(name)
    text = Path(shipped.source).read_text()
    return parse_chain(text, source=shipped.source, name=shipped.name, site=True, boundary=GADGETRON)


def _configuration_root(configuration: str, source: str) -> ET.Element:
    """Return the root element of an external's configuration text (a ``<configuration>``), parsed safely."""
    root = read_xml(configuration.strip("\x00 \n\r\t") or "<configuration/>", source)
    if root.tag != "configuration":
        raise ChainError(f"{source}: root element is <{root.tag}>, expected <configuration>")
    return root


def run_external(chain: Chain, connection: Any, *, output_dir: Path | None = None) -> None:
    """Run ``chain`` on the items of a Gadgetron connection, sending what it produces back in Gadgetron's types.

    Parameters
    ----------
    chain : The chain (wired with ``GADGETRON``).
    connection : gadgetron-python's connection.
    output_dir : Folder for files the chain writes (DICOM); the current directory if None.
    """
    for library in _CHATTY_LIBRARIES:  # gadgetron-python logs at DEBUG by default; their DEBUG floods Gadgetron's log
        logging.getLogger(library).setLevel(max(logging.INFO, logging.getLogger(library).getEffectiveLevel()))
    properties = _configuration_properties(connection)
    folder = output_dir or Path(properties.get(_OUTPUT_PROPERTY, ".") or ".")
    log.info("running chain '%s' (%d gadgets) inside Gadgetron", chain.name, len(chain.stages))
    run_chain(chain, connection.header, iter(connection), _sender(connection), stream=chain.name, output_dir=folder)


def _sender(connection: Any) -> Callable[[Any], None]:
    """Return the sink that converts what leaves the chain to Gadgetron's types and sends it."""

    def send(item: Any) -> None:
        if isinstance(item, SliceBuffer):
            connection.send(slice_buffer_to_recon_data(item, connection.header))
        elif isinstance(item, PhaseImages):
            connection.send(phase_images_to_image_array(item))
        elif isinstance(item, str):
            log.warning("chain message (Gadgetron's external connection carries no text): %s", item)
        else:
            connection.send(item)

    return send


def _configuration_text(connection: Any) -> str:
    """Return the external's configuration as text (gadgetron-python keeps the bytes it received)."""
    raw = getattr(getattr(connection, "raw_bytes", None), "config", None)
    if raw:
        return bytes(raw).decode("utf-8", errors="replace")
    config = getattr(connection, "config", None)
    return ET.tostring(config, encoding="unicode") if config is not None else ""


def _configuration_properties(connection: Any) -> dict[str, str]:
    """Return the ``<property>`` elements directly under the external's configuration."""
    config = getattr(connection, "config", None)
    return properties_from_xml(config) if config is not None else {}


def _gadget_target(classname: str) -> Callable[[Any], None]:
    """Return the target that runs one registered gadget on a Gadgetron connection, its properties the config."""

    def run(connection: Any) -> None:
        spec = registered_gadgets()[classname]
        try:
            properties = _configuration_properties(connection)
            config = spec.config.from_properties(properties)
        except PropertyError as exc:
            raise ChainError(f"external configuration of {classname}: {exc}") from exc
        stage = Stage(name=classname, spec=spec, properties=properties, config=config)
        single = Chain(name=classname, source="external configuration", description=spec.summary, stages=(stage,))
        run_external(single, connection)

    run.__name__ = classname
    return run


def __getattr__(name: str) -> Callable[[Any], None]:
    """Return the external target of a registered gadget, by its chain class name (Gadgetron's ``target``)."""
    if name in registered_gadgets():
        return _gadget_target(name)
    targets = ", ".join(["chain", *registered_gadgets()])
    raise AttributeError(f"module {__name__!r} has no target {name!r}; targets: {targets}")
