"""Gadgetron v2 chain XML to a validated list of stages, before any data is read.

Accepted::

    <configuration>
      <version>2</version>
      <readers>...</readers> <writers>...</writers>      (Gadgetron's; accepted and not needed here)
      <stream>
        <gadget>
          <name>Recon</name> <dll>qmri</dll> <classname>CartesianReconGadget</classname>
          <property name="method" value="cg_sense"/>
          <property><name>cg_iterations</name><value>30</value></property>
        </gadget>
      </stream>
    </configuration>

Chains arrive from the network as CONFIG_TEXT, so the XML is parsed with defusedxml (no entities, no DTDs), and
such a client's chain may not set site properties (paths, hosts, ports, model files: ``prop(..., site=True)``).
Chain files on the server's disk (shipped, the site's folder, a file named on the command line) are the site's and
may. Every problem (malformed XML, unknown gadget, unknown property, wrong type, a site property from a client) is a
:class:`ChainError` that names the file, the gadget and the property.
"""

import xml.etree.ElementTree as ET
from dataclasses import dataclass
from importlib import import_module
from pathlib import Path

from defusedxml import DefusedXmlException
from defusedxml.ElementTree import DefusedXMLParser

from gadgets.runtime.config import GadgetConfig, PropertyError, properties_from_xml
from gadgets.runtime.registry import GadgetSpec, registered_gadgets
from gadgets.runtime.wiring import CLIENT, Boundary, Node, check_wiring

CHAINS_DIR = Path(next(iter(import_module("qmri_chains").__path__)))
"""The shipped chains, one XML file per clinical protocol: the checkout's ``chains/``, installed as ``qmri_chains``."""

_IGNORED_SECTIONS = frozenset({"version", "readers", "writers", "stream"})
_UNSUPPORTED_STREAM_NODES = frozenset({"external", "parallel", "distributed", "parallelprocess", "puregadget"})


class ChainError(ValueError):
    """A chain that cannot run: says which file, which gadget and which property."""


@dataclass(frozen=True)
class Stage:
    """One gadget of a chain: its name in the chain, the registered gadget and its parsed properties."""

    name: str
    spec: GadgetSpec
    properties: dict[str, str]
    config: GadgetConfig

    def node(self) -> Node:
        """Return the stage as the wiring check sees it: what it takes and, under its configuration, sends."""
        return Node(
            self.name, self.spec.classname, self.spec.consumes, self.spec.produces, self.spec.sends(self.config)
        )


@dataclass(frozen=True)
class Chain:
    """A validated chain."""

    name: str
    source: str
    description: str
    stages: tuple[Stage, ...]


def parse_chain(
    text: str,
    *,
    source: str = "config text",
    name: str | None = None,
    site: bool = False,
    boundary: Boundary = CLIENT,
) -> Chain:
    """Return the validated chain described by Gadgetron v2 XML text.

    Parameters
    ----------
    text : The XML.
    source : Where it came from, for error messages (a path, or ``config text``).
    name : The chain's name; defaults to the source's file stem.
    site : The text is the site's (a file on the server's disk), so it may set site properties; False for a
        client's CONFIG_TEXT, which may not.
    boundary : What enters the chain and what may leave it (``gadgets.runtime.wiring``): MRD messages from and to
        a client, or what a Gadgetron stream hands an external gadget.

    Returns
    -------
    The chain.

    Raises
    ------
    ChainError
        For malformed XML, a wrong root or version, an unsupported element, an unknown gadget, a bad property, a
        site property in a client's chain, or a miswired chain (a gadget that gets nothing it handles, items that
        cannot leave the chain).
    """
    root = read_xml(text, source)
    if root.tag != "configuration":
        raise ChainError(f"{source}: root element is <{root.tag}>, expected a Gadgetron v2 <configuration>")
    version = (root.findtext("version") or "").strip()
    if version != "2":
        raise ChainError(f"{source}: <version> is '{version}', only Gadgetron chain version 2 is supported")
    for child in root:
        if isinstance(child.tag, str) and child.tag not in _IGNORED_SECTIONS:
            raise ChainError(f"{source}: unexpected element <{child.tag}> in <configuration>")
    stream = root.find("stream")
    if stream is None:
        raise ChainError(f"{source}: no <stream> element")
    gadgets = registered_gadgets()
    stages = []
    for node in stream:
        if not isinstance(node.tag, str):
            continue
        if node.tag in _UNSUPPORTED_STREAM_NODES:
            raise ChainError(
                f"{source}: <{node.tag}> is not supported here: a chain for qmri lists our gadgets directly in "
                "<stream>; <external> blocks belong in Gadgetron configurations (chains/gadgetron/, qmri check-chain)"
            )
        if node.tag != "gadget":
            raise ChainError(f"{source}: unexpected element <{node.tag}> in <stream>")
        stages.append(_stage(node, gadgets, source, site=site))
    if not stages:
        raise ChainError(f"{source}: <stream> holds no <gadget>")
    names = [s.name for s in stages]
    if len(set(names)) != len(names):
        raise ChainError(f"{source}: gadget names must be unique, got {names}")
    try:
        check_wiring([stage.node() for stage in stages], boundary)
    except ValueError as exc:
        raise ChainError(f"{source}: {exc}") from exc
    return Chain(
        name=name or (Path(source).stem if source != "config text" else "config text"),
        source=source,
        description=first_comment(root),
        stages=tuple(stages),
    )


def _stage(node: ET.Element, gadgets: dict[str, GadgetSpec], source: str, *, site: bool) -> Stage:
    """Return one validated stage from a ``<gadget>`` element (a client's may not set site properties)."""
    classname = (node.findtext("classname") or "").strip()
    name = (node.findtext("name") or "").strip() or classname
    where = f"{source}: gadget '{name}'"
    if not classname:
        raise ChainError(f"{where}: no <classname>")
    spec = gadgets.get(classname)
    if spec is None:
        raise ChainError(f"{where}: unknown gadget class '{classname}' (known: {', '.join(sorted(gadgets))})")
    try:
        properties = properties_from_xml(node)
        config = spec.config.from_properties(properties)
    except PropertyError as exc:
        raise ChainError(f"{where} ({classname}): {exc}") from exc
    refused = [] if site else config.client_violations()
    if refused:
        raise ChainError(
            f"{where} ({classname}): property '{refused[0]}' is a site setting (a path, host, port, model file or "
            "resource cap) that a client's chain cannot set; use a chain the server offers by name (CONFIG_FILE), or "
            "ask the site to add one to its chain folder (qmri serve --site-chains)"
        )
    return Stage(name=name, spec=spec, properties=properties, config=config)


def read_xml(text: str, source: str) -> ET.Element:
    """Return the root of chain XML from anyone, parsed safely (no entities, no DTDs), comments kept.

    Raises
    ------
    ChainError
        For malformed XML or XML that defusedxml refuses, naming ``source``.
    """
    parser = DefusedXMLParser(target=ET.TreeBuilder(insert_comments=True))
    try:
        parser.feed(text.strip("\x00 \n\r\t"))
        return parser.close()
    except (ET.ParseError, DefusedXmlException) as exc:
        raise ChainError(f"{source}: malformed XML: {exc}") from exc


def first_comment(root: ET.Element) -> str:
    """Return the first line of the chain's first XML comment, its one-line description."""
    for node in root.iter():
        if node.tag is ET.Comment and node.text:
            return node.text.strip().splitlines()[0]
    return ""


def load_chain(path: Path) -> Chain:
    """Return the validated chain in an XML file.

    Parameters
    ----------
    path : The chain file.

    Returns
    -------
    The chain.

    Raises
    ------
    ChainError
        If the file cannot be read or the chain is invalid.
    """
    path = Path(path)
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as exc:
        raise ChainError(f"{path}: cannot read chain: {exc}") from exc
    return parse_chain(text, source=str(path), name=path.stem, site=True)


def shipped_chains() -> dict[str, Path]:
    """Return the shipped chain files by name (file stem)."""
    return {p.stem: p for p in sorted(CHAINS_DIR.glob("*.xml"))}


def chains_for_clients(site_chains: Path | None = None) -> dict[str, Path]:
    """Return the chain files a client may name by CONFIG_FILE, by name: the shipped ones and the site's, which win.

    Parameters
    ----------
    site_chains : The site's chain folder (``qmri serve --site-chains``), or None.
    """
    chains = shipped_chains()
    if site_chains is not None:
        chains.update({p.stem: p for p in sorted(Path(site_chains).glob("*.xml"))})
    return chains


def resolve_chain(name_or_file: str) -> Chain:
    """Return the chain named by a shipped chain name (``foo`` or ``foo.xml``) or by a path to an XML file.

    Parameters
    ----------
    name_or_file : Shipped chain name, or a path.

    Returns
    -------
    The chain.

    Raises
    ------
    ChainError
        If no such chain exists or it is invalid.
    """
    shipped = shipped_chains()
    stem = name_or_file.strip().removesuffix(".xml")
    if stem in shipped:
        return load_chain(shipped[stem])
    path = Path(name_or_file)
    if path.is_file():
        return load_chain(path)
    raise ChainError(f"no chain '{name_or_file}': not a shipped chain ({', '.join(shipped)}) and not a file")
