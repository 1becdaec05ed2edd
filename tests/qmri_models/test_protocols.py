"""The protocol spec: one name per protocol, its model, its times where its preparation keeps them, its signal."""

import typing
from collections.abc import Callable

import numpy as np
import pytest
import torch

from qmri_models.protocols import (
    INVERSION,
    PREPARATIONS,
    PROTOCOLS,
    SATURATION,
    T2PREP,
    ProtocolName,
    header_preparation,
    protocol_spec,
)
from qmri_models.signal_models import MODELS, signal_model
from qmri_models.simulation.raw_writer import ismrmrd_header
from qmri_models.simulation.scan import CONTRASTS, ScanSettings, contrast_images
from qmri_models.simulation.tissues import ParameterMaps

EFFICIENCY = 0.96
"""The simulator's default inversion efficiency."""

SIGNALS: dict[str, Callable[[np.ndarray, float, float, float], np.ndarray]] = {
    "molli": lambda t, t1, t2, pd: pd - pd * (1 + EFFICIENCY) * np.exp(-t * EFFICIENCY / t1),
    "t2prep": lambda t, t1, t2, pd: pd * np.exp(-t / t2),
    "ir": lambda t, t1, t2, pd: pd * (1 - (1 + EFFICIENCY) * np.exp(-t / t1)),
    "sasha": lambda t, t1, t2, pd: pd * (1 - np.exp(-t / t1)),
}
"""Each protocol's signal of a tissue at preparation times ``t`` (ms), written out from its paper."""


def test_names_are_one_vocabulary() -> None:
    assert typing.get_args(ProtocolName) == tuple(PROTOCOLS) == CONTRASTS
    assert all(name == spec.name for name, spec in PROTOCOLS.items())


@pytest.mark.parametrize("name", list(PROTOCOLS))
def test_each_protocol_names_a_model_of_its_quantity_and_unit(name: str) -> None:
    spec = protocol_spec(name)
    model = MODELS[spec.model]
    assert model.primary_map == spec.quantity
    params = torch.tensor([[p.lower + 1.0 if np.isfinite(p.upper) else 1.0 for p in model.parameters]])
    maps = model.maps(params, torch.zeros((1, len(model.parameters), len(model.parameters))))
    assert maps[spec.quantity].unit == spec.unit
    assert spec.preparation in PREPARATIONS
    assert len(spec.prep_times_ms) >= len(model.parameters) + 2  # residual degrees of freedom for the SD


def test_unknown_protocol_names_the_known_ones() -> None:
    with pytest.raises(ValueError, match="unknown protocol 'T1'; known: molli, t2prep, ir"):
        protocol_spec("T1")


def test_each_preparation_keeps_its_times_in_its_own_place() -> None:
    places = [p.user_parameter for p in PREPARATIONS]
    assert len(set(places)) == len(places)
    assert places[-1] is None  # TI last: a named list wins over TI, as the buffer reads them
    assert [p for p in PREPARATIONS if "IR" in p.scanning_sequence] == [INVERSION]
    assert INVERSION.prep_time_attribute == "InversionTime"


@pytest.mark.parametrize(
    ("names", "has_ti", "expected"),
    [
        ((), True, INVERSION),
        (("T2PrepDuration_ms",), False, T2PREP),
        (("SaturationTime_ms",), True, SATURATION),
        (("T2PrepDuration_ms", "Other"), True, T2PREP),
        (("Other",), False, None),
        ((), False, None),
    ],
)
def test_header_preparation_reads_the_named_lists_first_then_ti(
    names: tuple[str, ...], has_ti: bool, expected: object
) -> None:
    assert header_preparation(names, has_ti=has_ti) is expected


@pytest.mark.parametrize("name", list(PROTOCOLS))
def test_simulated_header_keeps_the_times_where_the_preparation_says(name: str) -> None:
    spec = protocol_spec(name)
    header = ismrmrd_header(ScanSettings(contrast=name, matrix=32, n_coils=2))
    lists = {p.name: [] for p in header.userParameters.userParameterDouble}
    for p in header.userParameters.userParameterDouble:
        lists[p.name].append(p.value)
    if spec.preparation.user_parameter is None:
        assert list(header.sequenceParameters.TI) == list(spec.prep_times_ms)
        assert not lists
    else:
        assert lists == {spec.preparation.user_parameter: list(spec.prep_times_ms)}
        assert not header.sequenceParameters.TI
    assert header_preparation(lists, has_ti=bool(header.sequenceParameters.TI)) is spec.preparation
    assert header.measurementInformation.sequenceName == spec.readout.sequence_name


def test_every_protocol_has_a_reference_signal() -> None:
    assert set(SIGNALS) == set(PROTOCOLS)


@pytest.mark.parametrize("name", list(PROTOCOLS))
def test_simulated_signal_is_the_protocols_written_out_signal(name: str) -> None:
    t1 = np.array([[400.0, 900.0], [1400.0, 4000.0]])
    t2 = np.array([[50.0, 70.0], [100.0, 1500.0]])
    pd = np.array([[0.7, 0.8], [0.9, 1.0]])
    truth = ParameterMaps(t1_ms=t1, t2_ms=t2, pd=pd, labels=np.ones((2, 2), int), label_names=("bg", "tissue"))
    settings = ScanSettings(contrast=name, matrix=32)
    signal = contrast_images(settings, truth)
    times = np.asarray(protocol_spec(name).prep_times_ms)
    expected = SIGNALS[name](times[:, None, None], t1, t2, pd)
    np.testing.assert_allclose(signal, expected, rtol=1e-12, atol=1e-12)
    model = signal_model(protocol_spec(name).model)
    assert model.signed == bool((expected < 0).any())
