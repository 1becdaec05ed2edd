"""Gadgetron stream configurations that run our chains in ``<external>`` blocks: read and checked before data.

A configuration in ``chains/gadgetron/`` is Gadgetron's own (version 2): Gadgetron's C++ gadgets first (noise
adjustment, accumulate/trigger, BucketToBuffer) and ours in ``<external>`` blocks that Gadgetron runs as
``python -m gadgetron PORT gadgets.external TARGET``. ``qmri check-chain`` reads one as Gadgetron would and checks the
whole stream's wiring: what each C++ gadget takes and sends (for the ones listed in :data:`GADGETRON_GADGETS`), each
external block's own chain, and what crosses the process boundary (a SliceBuffer leaves an external block as
``ReconData``, phase images as an ``ImageArray``).
"""

import xml.etree.ElementTree as ET
from dataclasses import dataclass

import ismrmrd
from defusedxml.ElementTree import tostring
from gadgetron.types.acquisition_bucket import AcquisitionBucket
from gadgetron.types.image_array import ImageArray
from gadgetron.types.recon_data import ReconData

from gadgets.external import EXTERNAL_MODULE, GADGETRON, external_chain
from gadgets.items import PhaseImages, SliceBuffer
from gadgets.runtime.chain import Chain, ChainError, first_comment, read_xml
from gadgets.runtime.registry import registered_gadgets
from gadgets.runtime.wiring import Boundary, Flow, Node, check_leaving, flow_through

_ACQ, _BUCKET, _IMAGE = (ismrmrd.Acquisition,), (AcquisitionBucket,), (ismrmrd.Image,)
GADGETRON_GADGETS: dict[str, tuple[tuple[type, ...], tuple[type, ...]]] = {
    "NoiseAdjustGadget": (_ACQ, _ACQ),
    "RemoveROOversamplingGadget": (_ACQ, _ACQ),
    "AsymmetricEchoAdjustROGadget": (_ACQ, _ACQ),
    "PCACoilGadget": (_ACQ, _ACQ),
    "CoilReductionGadget": (_ACQ, _ACQ),
    "AcquisitionAccumulateTriggerGadget": (_ACQ, _BUCKET),
    "BucketToBufferGadget": (_BUCKET, (ReconData,)),
    "GenericReconCartesianReferencePrepGadget": ((ReconData,), (ReconData,)),
    "GenericReconEigenChannelGadget": ((ReconData,), (ReconData,)),
    "GenericReconCartesianGrappaGadget": ((ReconData,), (ImageArray,)),
    "GenericReconCartesianSpiritGadget": ((ReconData,), (ImageArray,)),
    "SimpleReconGadget": ((ReconData,), (ImageArray,)),
    "ImageArraySplitGadget": ((ImageArray,), _IMAGE),
    "ComplexToFloatGadget": (_IMAGE, _IMAGE),
    "FloatToUShortGadget": (_IMAGE, _IMAGE),
    "ImageFinishGadget": (_IMAGE, _IMAGE),
    "ExtractGadget": (_IMAGE, _IMAGE),
}
"""Gadgetron's C++ gadgets the check knows: what each takes and sends. An unknown one ends the type check there."""

GADGETRON_CLIENT = Boundary(
    arriving=(ismrmrd.Acquisition, ismrmrd.Waveform),
    leaving=(ismrmrd.Acquisition, ismrmrd.Waveform, ismrmrd.Image),
    peer="Gadgetron's client (its MRD writers)",
)
"""What Gadgetron's readers hand the stream and what its writers send back to the scanner."""

_CROSSING = {SliceBuffer: ReconData, PhaseImages: ImageArray}
"""What our items become when they leave an external block (``gadgets.gadgetron_types``)."""
_OURS = frozenset({"", "qmri"})
"""``<dll>`` values of our own gadgets in a chain file."""


@dataclass(frozen=True)
class GadgetronStage:
    """One element of a Gadgetron stream: a C++ gadget, or an external block running one of our chains."""

    name: str
    classname: str
    """The C++ gadget's class, or ``gadgets.external.TARGET`` for an external block."""
    chain: Chain | None
    """The chain an external block of ours runs; None for a C++ gadget or someone else's external."""
    properties: dict[str, str]


@dataclass(frozen=True)
class GadgetronConfig:
    """A checked Gadgetron stream configuration."""

    source: str
    description: str
    stages: tuple[GadgetronStage, ...]


def is_gadgetron_config(text: str) -> bool:
    """Return whether chain XML is a Gadgetron configuration (an ``<external>`` or a gadget from a Gadgetron dll)."""
    try:
        root = read_xml(text, "chain")
    except ChainError:
        return False
    stream = root.find("stream")
    if stream is None:
        return False
    return stream.find("external") is not None or any(
        (g.findtext("dll") or "").strip() not in _OURS for g in stream.findall("gadget")
    )


def parse_gadgetron_config(text: str, *, source: str) -> GadgetronConfig:
    """Return a Gadgetron stream configuration, checked as one stream from Gadgetron's readers to its writers.

    Parameters
    ----------
    text : The configuration XML (the site's file).
    source : Where it came from, for messages.

    Returns
    -------
    Its stages.

    Raises
    ------
    ChainError
        For malformed XML, an external block of ours whose chain is invalid, or a miswired stream.
    """
    root = read_xml(text, source)
    stream = root.find("stream")
    if root.tag != "configuration" or stream is None:
        raise ChainError(f"{source}: not a Gadgetron v2 <configuration> with a <stream>")
    stages: list[GadgetronStage] = []
    flow: Flow | None = Flow.arriving(GADGETRON_CLIENT.arriving)
    try:
        for index, node in enumerate(child for child in stream if isinstance(child.tag, str)):
            stage, flow = _stage(node, index, flow, source)
            stages.append(stage)
        check_leaving(flow, GADGETRON_CLIENT)
    except ChainError:
        raise
    except ValueError as exc:
        raise ChainError(f"{source}: {exc}") from exc
    return GadgetronConfig(source, first_comment(root), tuple(stages))


def _stage(node: ET.Element, index: int, flow: Flow | None, source: str) -> tuple[GadgetronStage, Flow | None]:
    """Return one stream element as a stage, and what flows after it."""
    if node.tag == "gadget":
        classname = (node.findtext("classname") or "").strip()
        name = (node.findtext("name") or "").strip() or classname
        consumes, produces = GADGETRON_GADGETS.get(classname, (None, ()))
        after = flow_through([Node(name, classname, consumes, produces, produces)], flow)
        return GadgetronStage(name, classname, None, {}), after
    if node.tag != "external":
        raise ValueError(f"unexpected element <{node.tag}> in <stream>")
    execute = node.find("execute")
    configuration = node.find("configuration")
    config_text = tostring(configuration, encoding="unicode") if configuration is not None else "<configuration/>"
    name = f"External{index + 1}"
    if execute is None or execute.get("name") != EXTERNAL_MODULE:
        unknown = "a connected process" if execute is None else f"{execute.get('name')}.{execute.get('target')}"
        return GadgetronStage(name, unknown, None, {}), None
    target = execute.get("target", "")
    if target == "chain":
        chain = external_chain(config_text, source=f"{source}: {name}")
        nodes = [stage.node() for stage in chain.stages]
        properties: dict[str, str] = {}
    elif target in registered_gadgets():
        chain = external_chain(
            f"<configuration><stream><gadget><classname>{target}</classname>"
            f"{_properties_xml(configuration)}</gadget></stream></configuration>",
            source=f"{source}: {name}",
        )
        nodes = [stage.node() for stage in chain.stages]
        properties = dict(chain.stages[0].properties)
    else:
        raise ValueError(f"{name}: {EXTERNAL_MODULE} has no target '{target}' (chain or a gadget class name)")
    after = flow_through(nodes, flow)
    check_leaving(after, GADGETRON)
    if after is not None:
        crossed = {_CROSSING.get(kind, kind): sender for kind, sender in after.actual.items() if kind is not str}
        after = Flow(crossed, {_CROSSING.get(kind, kind) for kind in after.possible if kind is not str}, after.last)
    return GadgetronStage(name, f"{EXTERNAL_MODULE}.{target}", chain, properties), after


def _properties_xml(configuration: ET.Element | None) -> str:
    """Return the ``<property>`` elements of an external's configuration as XML text."""
    if configuration is None:
        return ""
    return "".join(tostring(p, encoding="unicode") for p in configuration.findall("property"))
