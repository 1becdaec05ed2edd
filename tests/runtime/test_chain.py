"""Chain parsing: every shipped chain loads, both property forms parse, and every error names file/gadget/property."""

import subprocess
import sys
from pathlib import Path

import pytest

from gadgets.recon import CartesianReconConfig
from gadgets.runtime.chain import ChainError, load_chain, parse_chain, resolve_chain, shipped_chains

GADGET = """
    <gadget>
      <name>{name}</name>
      <dll>qmri</dll>
      <classname>{classname}</classname>
      {properties}
    </gadget>"""


def chain_xml(*gadgets: str, version: str = "2") -> str:
    return f"<configuration><version>{version}</version><stream>{''.join(gadgets)}</stream></configuration>"


def gadget(name: str = "Recon", classname: str = "CartesianReconGadget", properties: str = "") -> str:
    return GADGET.format(name=name, classname=classname, properties=properties)


def test_every_shipped_chain_loads_with_a_description() -> None:
    chains = shipped_chains()
    assert {"cartesian_multiphase", "cartesian_2d", "passthrough"} <= set(chains)
    for path in chains.values():
        chain = load_chain(path)
        assert chain.stages
        assert chain.description


def test_both_property_forms_parse_to_typed_values() -> None:
    chain = parse_chain(
        chain_xml(
            gadget("Buffer", "AcquisitionBufferGadget"),
            gadget(
                properties='<property name="method" value="zero_filled"/>'
                "<property><name>cg_iterations</name><value> 7 </value></property>"
                '<property name="cg_lambda" value="0.5"/>'
            ),
            gadget("Images", "ImageSeriesGadget"),
        )
    )
    config = chain.stages[1].config
    assert isinstance(config, CartesianReconConfig)
    assert (config.method, config.cg_iterations, config.cg_lambda) == ("zero_filled", 7, 0.5)
    assert config.coil_combine == "espirit"  # default


def test_cartesian_multiphase_chain_matches_its_documented_order() -> None:
    chain = resolve_chain("cartesian_multiphase.xml")
    assert [s.spec.classname for s in chain.stages] == [
        "NoiseAdjustGadget",
        "AcquisitionBufferGadget",
        "CartesianReconGadget",
        "ImageSeriesGadget",
    ]


@pytest.mark.parametrize(
    ("xml", "message"),
    [
        ("<configuration><version>2</version><stream>", "malformed XML"),
        ("<gadgetronStreamConfiguration/>", "root element is <gadgetronStreamConfiguration>"),
        (chain_xml(gadget(), version="1"), "only Gadgetron chain version 2"),
        ("<configuration><version>2</version></configuration>", "no <stream>"),
        (chain_xml(), "holds no <gadget>"),
        (chain_xml(gadget(classname="os.system")), "gadget 'Recon': unknown gadget class 'os.system'"),
        (chain_xml(gadget(classname="")), "gadget 'Recon': no <classname>"),
        (
            chain_xml(gadget(properties='<property name="iterations" value="3"/>')),
            r"gadget 'Recon' \(CartesianReconGadget\): property 'iterations': unknown property",
        ),
        (
            chain_xml(gadget(properties='<property name="cg_iterations" value="many"/>')),
            "property 'cg_iterations': expects integer; got 'many'",
        ),
        (
            chain_xml(gadget(properties='<property name="cg_iterations" value="0"/>')),
            r"property 'cg_iterations': must be in \[1, 100\]",
        ),
        (
            chain_xml(gadget(properties='<property name="method" value="grappa"/>')),
            "property 'method': expects one of zero_filled, cg_sense; got 'grappa'",
        ),
        (
            chain_xml(gadget(properties='<property name="coil_combine" value="sos"/>')),
            "property 'coil_combine': sos only works with method zero_filled",
        ),
        (
            chain_xml(
                gadget(
                    classname="AcquisitionBufferGadget",
                    properties='<property name="prep_time_from_protocol" value="maybe"/>',
                )
            ),
            "property 'prep_time_from_protocol': expects true or false",
        ),
        (
            chain_xml(gadget(properties='<property name="method" value="a"/><property name="method" value="b"/>')),
            "property 'method': given more than once",
        ),
        (chain_xml(gadget(), gadget()), "gadget names must be unique"),
        (
            "<configuration><version>2</version><stream><external><execute name='x' target='y' type='python'/>"
            "</external></stream></configuration>",
            "<external> is not supported",
        ),
        (
            '<!DOCTYPE c [<!ENTITY e "x">]><configuration><version>2</version><stream>&e;</stream></configuration>',
            "malformed XML",
        ),
    ],
)
def test_chain_errors_name_source_gadget_and_property(xml: str, message: str) -> None:
    with pytest.raises(ChainError, match=message) as info:
        parse_chain(xml, source="chains/bad.xml")
    assert str(info.value).startswith("chains/bad.xml: ")


def test_load_chain_names_the_file(tmp_path: Path) -> None:
    path = tmp_path / "broken.xml"
    path.write_text(chain_xml(gadget(properties='<property name="cg_lambda" value="-1"/>')))
    with pytest.raises(ChainError, match=f"{path}: gadget 'Recon'.*'cg_lambda'"):
        load_chain(path)
    with pytest.raises(ChainError, match="no chain 'nothing_like_this'"):
        resolve_chain("nothing_like_this")


def run_qmri(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "gadgets", *args], capture_output=True, text=True, check=False, timeout=120
    )


@pytest.mark.slow
def test_cli_chains_lists_one_line_per_shipped_chain() -> None:
    result = run_qmri("chains")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.strip().splitlines()
    assert len(lines) == len(shipped_chains())
    assert any(line.startswith("cartesian_multiphase") and "CG-SENSE" in line for line in lines)


@pytest.mark.slow
def test_cli_check_chain_accepts_good_and_rejects_bad(tmp_path: Path) -> None:
    good = run_qmri("check-chain", str(shipped_chains()["cartesian_multiphase"]))
    assert good.returncode == 0, good.stderr
    assert "valid chain 'cartesian_multiphase' with 4 gadgets" in good.stdout
    bad_file = tmp_path / "bad.xml"
    bad_file.write_text(chain_xml(gadget(properties='<property name="cg_iterations" value="x"/>')))
    bad = run_qmri("check-chain", str(bad_file))
    assert bad.returncode == 2
    assert f"{bad_file}: gadget 'Recon' (CartesianReconGadget): property 'cg_iterations'" in bad.stderr


@pytest.mark.slow
def test_cli_gadgets_documents_every_property() -> None:
    result = run_qmri("gadgets")
    assert result.returncode == 0, result.stderr
    for name in ("method", "coil_combine", "cg_iterations", "phase_dimension", "series_index"):
        assert f"    {name} (" in result.stdout
    assert "    node_host (text, default , site setting): " in result.stdout
    assert "    cg_iterations (integer, default 10): " in result.stdout
    assert "    takes SliceBuffer; sends PhaseImages; passes on everything else" in result.stdout  # the recon
    assert "    takes PhaseImages, ImageArray; sends PhaseImages, MapImages; passes on" in result.stdout  # the fit
