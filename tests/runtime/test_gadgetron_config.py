"""Gadgetron stream configurations (chains/gadgetron/): checked as one stream, in step with the shipped chains."""

from pathlib import Path

import pytest

from gadgets.gadgetron_config import is_gadgetron_config, parse_gadgetron_config
from gadgets.runtime.chain import CHAINS_DIR, ChainError, load_chain

GADGETRON_DIR = CHAINS_DIR / "gadgetron"
LEFT_TO_GADGETRON = {"NoiseAdjustGadget", "DicomOutputGadget"}


def gadgetron_configs() -> list[Path]:
    return sorted(GADGETRON_DIR.glob("*.xml"))


def test_the_mapping_puq_and_mrf_protocols_have_gadgetron_configurations() -> None:
    assert {"t1_molli", "t2prep", "t1_molli_puq", "mrf_fisp"} <= {p.stem for p in gadgetron_configs()}


@pytest.mark.parametrize("path", gadgetron_configs(), ids=lambda p: p.stem)
def test_each_configuration_is_wired_and_runs_the_shipped_chain(path: Path) -> None:
    text = path.read_text()
    assert is_gadgetron_config(text)
    config = parse_gadgetron_config(text, source=str(path))
    assert config.description
    (external,) = [stage for stage in config.stages if stage.chain is not None]
    assert config.stages[0].classname == "NoiseAdjustGadget"  # Gadgetron's prewhitening, in place of ours
    shipped = load_chain(CHAINS_DIR / path.name)
    expected = [(s.spec.classname, s.properties) for s in shipped.stages if s.spec.classname not in LEFT_TO_GADGETRON]
    assert external.chain is not None
    assert [(s.spec.classname, s.properties) for s in external.chain.stages] == expected


def configuration(*elements: str) -> str:
    return f"<configuration><version>2</version><stream>{''.join(elements)}</stream></configuration>"


def gadgetron_gadget(name: str, classname: str) -> str:
    return f"<gadget><name>{name}</name><dll>gadgetron_mricore</dll><classname>{classname}</classname></gadget>"


ACC_TRIG = gadgetron_gadget("AccTrig", "AcquisitionAccumulateTriggerGadget")
BUCKET = gadgetron_gadget("B2B", "BucketToBufferGadget")
GRAPPA = gadgetron_gadget("Grappa", "GenericReconCartesianGrappaGadget")


def external(*gadgets: tuple[str, str]) -> str:
    stream = "".join(f"<gadget><name>{n}</name><classname>{c}</classname></gadget>" for n, c in gadgets)
    return (
        '<external><execute name="gadgets.external" target="chain" type="python"/>'
        f"<configuration><stream>{stream}</stream></configuration></external>"
    )


def test_a_chain_after_bucket_to_buffer_takes_recon_data() -> None:
    text = configuration(
        ACC_TRIG,
        BUCKET,
        external(
            ("Buffer", "AcquisitionBufferGadget"),
            ("Recon", "CartesianReconGadget"),
            ("Fit", "ParameterFitGadget"),
            ("Maps", "MapSeriesGadget"),
        ),
    )
    parse_gadgetron_config(text, source="ok.xml")


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (
            configuration(ACC_TRIG, external(("Buffer", "AcquisitionBufferGadget"))),
            r"gadget 'Buffer' \(AcquisitionBufferGadget\) takes Acquisition, ReconData, but nothing before it sends "
            r"one: gadget 'AccTrig' \(AcquisitionAccumulateTriggerGadget\)",
        ),
        (
            configuration(
                ACC_TRIG,
                BUCKET,
                external(
                    ("Buffer", "AcquisitionBufferGadget"),
                    ("Recon", "CartesianReconGadget"),
                    ("Fit", "ParameterFitGadget"),
                ),
            ),
            r"'Fit' \(ParameterFitGadget\) sends MapImages, which cannot leave the chain for Gadgetron",
        ),
        (
            configuration(ACC_TRIG, BUCKET),
            r"'B2B' \(BucketToBufferGadget\) sends ReconData, which cannot leave the chain for Gadgetron's client",
        ),
        (
            configuration(
                ACC_TRIG,
                BUCKET,
                '<external><execute name="gadgets.external" target="NoSuchGadget" type="python"/></external>',
            ),
            "has no target 'NoSuchGadget'",
        ),
        (
            configuration(external(("Maps", "MapSeriesGadget"))),
            r"gadget 'Maps' \(MapSeriesGadget\) takes MapImages",
        ),
    ],
)
def test_a_miswired_gadgetron_configuration_is_refused(text: str, message: str) -> None:
    with pytest.raises(ChainError, match=message):
        parse_gadgetron_config(text, source="bad.xml")


def test_gadgetron_grappa_images_feed_our_fit_but_not_the_puq_fit() -> None:
    # Gadgetron's GRAPPA sends an ImageArray: the fit takes it; the PUQ fit needs MC samples that only PUQ recon makes
    fit = configuration(ACC_TRIG, BUCKET, GRAPPA, external(("Fit", "ParameterFitGadget"), ("Maps", "MapSeriesGadget")))
    parse_gadgetron_config(fit, source="grappa.xml")
    puq = configuration(ACC_TRIG, BUCKET, GRAPPA, external(("Fit", "PuqFitGadget"), ("Maps", "MapSeriesGadget")))
    with pytest.raises(ChainError, match=r"'Fit' \(PuqFitGadget\) takes PhaseImages, but nothing before it sends"):
        parse_gadgetron_config(puq, source="grappa.xml")


def test_an_unknown_gadgetron_gadget_ends_the_type_check() -> None:
    text = configuration(
        "<gadget><dll>gadgetron_custom</dll><classname>SiteSpecialGadget</classname></gadget>",
        external(
            ("Buffer", "AcquisitionBufferGadget"), ("Recon", "CartesianReconGadget"), ("Images", "ImageSeriesGadget")
        ),
        gadgetron_gadget("Finish", "ImageFinishGadget"),
    )
    assert len(parse_gadgetron_config(text, source="site.xml").stages) == 3
