"""Chain variants for tests, built through the chain parser (not by replacing strings in the XML)."""

from pathlib import Path
from xml.etree.ElementTree import SubElement, tostring

from defusedxml.ElementTree import fromstring

from gadgets.runtime.chain import Chain, parse_chain, resolve_chain


def shipped_text(name: str) -> str:
    """Return a shipped chain's XML."""
    return Path(resolve_chain(name).source).read_text()


def variant_text(name: str, gadget: str, **properties: object) -> str:
    """Return a shipped chain's XML with some properties of one of its gadgets (by its ``<name>``) set or replaced."""
    root = fromstring(shipped_text(name))
    (node,) = [g for g in root.iter("gadget") if g.findtext("name") == gadget]
    for key, value in properties.items():
        for old in [p for p in node.findall("property") if (p.get("name") or p.findtext("name")) == key]:
            node.remove(old)
        SubElement(node, "property", name=key, value=str(value))
    return tostring(root, encoding="unicode")


def with_gadget(name: str, gadget: str, classname: str, **properties: object) -> str:
    """Return a shipped chain's XML with one of our gadgets (``<name>`` gadget, ``<classname>``) appended."""
    root = fromstring(shipped_text(name))
    node = SubElement(root.find("stream"), "gadget")
    for tag, text in (("name", gadget), ("dll", "qmri"), ("classname", classname)):
        SubElement(node, tag).text = text
    for key, value in properties.items():
        SubElement(node, "property", name=key, value=str(value))
    return tostring(root, encoding="unicode")


def chain_variant(name: str, gadget: str, **properties: object) -> Chain:
    """Return a shipped chain with some properties of one of its gadgets (by its ``<name>``) set or replaced.

    Parsed as a client's chain text would be: site properties (paths, nodes, weights files) are refused.
    """
    return parse_chain(variant_text(name, gadget, **properties), name=f"{name} variant")


def with_gadget_replaced(name: str, gadget: str, classname: str, **properties: object) -> str:
    """Return a shipped chain's XML with one of its gadgets (by ``<name>``) swapped for ``<classname>``, which gets
    exactly ``properties``."""
    root = fromstring(shipped_text(name))
    (node,) = [g for g in root.iter("gadget") if g.findtext("name") == gadget]
    node.find("classname").text = classname
    for old in node.findall("property"):
        node.remove(old)
    for key, value in properties.items():
        SubElement(node, "property", name=key, value=str(value))
    return tostring(root, encoding="unicode")
