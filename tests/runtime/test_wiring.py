"""Typed chains: a miswired chain is refused when it is read, naming the gadgets, before any data arrives."""

import subprocess
import sys
from pathlib import Path

import ismrmrd
import pytest

from gadgets.items import MapImages, PhaseImages, SliceBuffer
from gadgets.runtime.chain import ChainError, parse_chain, shipped_chains
from gadgets.runtime.registry import registered_gadgets
from gadgets.runtime.wiring import CLIENT, Boundary, Node, check_wiring
from tests.chain_variants import variant_text


def chain_of(*stages: tuple[str, str, str]) -> str:
    gadgets = "".join(
        f"<gadget><name>{name}</name><classname>{classname}</classname>{properties}</gadget>"
        for name, classname, properties in stages
    )
    return f"<configuration><version>2</version><stream>{gadgets}</stream></configuration>"


BUFFER = ("Buffer", "AcquisitionBufferGadget", "")
RECON = ("Recon", "CartesianReconGadget", "")
FIT = ("Fit", "ParameterFitGadget", "")
MAPS = ("Maps", "MapSeriesGadget", "")


@pytest.mark.parametrize(
    ("stages", "message"),
    [
        (
            (BUFFER, FIT, MAPS),
            r"gadget 'Fit' \(ParameterFitGadget\) takes PhaseImages, ImageArray, but nothing before it sends one: "
            r"gadget 'Buffer' \(AcquisitionBufferGadget\) passes on Waveform, Image, SliceBuffer",
        ),
        (
            (RECON, FIT, MAPS),
            r"gadget 'Recon' \(CartesianReconGadget\) takes SliceBuffer, but nothing before it sends one: "
            r"the stream's input passes on Acquisition, Waveform, Image",
        ),
        (
            (BUFFER, RECON, FIT),
            r"gadget 'Fit' \(ParameterFitGadget\) sends MapImages, which cannot leave the chain for the client .*"
            r"add a gadget that takes it after it \(.*\bMapSeriesGadget\b.*\)",
        ),
        (
            (BUFFER, RECON, ("Fit", "ParameterFitGadget", '<property name="send_phase_images" value="true"/>'), MAPS),
            r"gadget 'Fit' \(ParameterFitGadget\) sends PhaseImages, which cannot leave.*ImageSeriesGadget",
        ),
    ],
)
def test_a_miswired_chain_is_refused_naming_the_gadgets(stages: tuple[tuple[str, str, str], ...], message: str) -> None:
    with pytest.raises(ChainError, match=message):
        parse_chain(chain_of(*stages), source="chains/miswired.xml")


def test_a_stage_waiting_for_what_a_property_turns_on_is_accepted() -> None:
    # t1_molli has an ImageSeriesGadget for the phase images the fit passes on only with send_phase_images=true
    off = parse_chain(variant_text("t1_molli", "Fit", send_phase_images="false"))
    on = parse_chain(variant_text("t1_molli", "Fit", send_phase_images="true"))
    assert [s.spec.classname for s in off.stages] == [s.spec.classname for s in on.stages]


def test_every_shipped_chain_is_wired_and_every_gadget_declares_its_types() -> None:
    for path in shipped_chains().values():
        parse_chain(path.read_text(), source=str(path), site=True)
    for spec in registered_gadgets().values():
        assert all(isinstance(kind, type) for kind in (*spec.consumes, *spec.produces)), spec.classname


def test_an_unknown_gadget_ends_the_check_and_a_stranded_type_is_named() -> None:
    unknown = Node("Cxx", "SomeGadgetronGadget", None, (), ())
    fit = Node("Fit", "ParameterFitGadget", (PhaseImages,), (MapImages,), (MapImages,))
    check_wiring([unknown, fit], Boundary(arriving=(ismrmrd.Acquisition,), leaving=(ismrmrd.Image,), peer="x"))
    buffer = Node("Buffer", "AcquisitionBufferGadget", (ismrmrd.Acquisition,), (SliceBuffer,), (SliceBuffer,))
    with pytest.raises(ValueError, match=r"'Buffer' .* sends SliceBuffer, which cannot leave the chain for the client"):
        check_wiring([buffer], CLIENT)


def test_check_chain_refuses_a_miswired_chain_before_data(tmp_path: Path) -> None:
    path = tmp_path / "miswired.xml"
    path.write_text(chain_of(BUFFER, FIT, MAPS))
    result = subprocess.run(
        [sys.executable, "-m", "gadgets", "check-chain", str(path)], capture_output=True, text=True, check=False
    )
    assert result.returncode != 0
    assert "'Fit' (ParameterFitGadget) takes PhaseImages" in result.stderr
    assert "'Buffer' (AcquisitionBufferGadget)" in result.stderr
