"""AcquisitionBufferGadget on input as other scanners send it: flag conventions, interleaved slices, caps, noise.

The simulated MOLLI file flags the last readout of each slice (ACQ_LAST_IN_SLICE) and sends the slices one after
the other; the tests re-flag and reorder its readouts the way other scanners do and check that the buffer gives the
same slices, at the readout where they are complete, and that what it holds stays bounded.
"""

import copy
import itertools
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import ismrmrd
import numpy as np
import pytest

from gadgets.buffering import AcquisitionBufferConfig, SliceBufferBuilder
from gadgets.items import SliceBuffer
from gadgets.runtime.chain import resolve_chain
from gadgets.runtime.pipeline import StreamError, run_chain
from tests.chain_variants import chain_variant
from tests.conftest import raw_header_and_items

NOISE = ismrmrd.ACQ_IS_NOISE_MEASUREMENT
LAST_IN_SLICE = ismrmrd.ACQ_LAST_IN_SLICE
LAST_IN_MEASUREMENT = ismrmrd.ACQ_LAST_IN_MEASUREMENT


def _noise(items: list[Any]) -> list[Any]:
    return [a for a in items if a.is_flag_set(NOISE)]


def _imaging(items: list[Any]) -> list[Any]:
    return [a for a in items if not a.is_flag_set(NOISE)]


def _per_phase_flags(items: list[Any]) -> list[Any]:
    """ACQ_LAST_IN_SLICE on the last readout of every (slice, phase), as sequences that acquire phase images do."""
    last: dict[tuple[int, int], Any] = {}
    for acq in _imaging(items):
        acq.clear_flag(LAST_IN_SLICE)
        last[acq.idx.slice, acq.idx.set] = acq
    for acq in last.values():
        acq.set_flag(LAST_IN_SLICE)
    return items


def _no_slice_flags(items: list[Any]) -> list[Any]:
    """Neither ACQ_LAST_IN_SLICE nor ACQ_LAST_IN_MEASUREMENT: slices follow each other, the stream just ends."""
    for acq in items:
        acq.clear_flag(LAST_IN_SLICE)
        acq.clear_flag(LAST_IN_MEASUREMENT)
    return items


def _interleaved(items: list[Any]) -> list[Any]:
    """The slices' readouts alternate one by one (each slice's own order kept); ACQ_LAST_IN_MEASUREMENT at the end."""
    by_slice = [[a for a in _imaging(items) if a.idx.slice == s] for s in (0, 1)]
    mixed = [a for pair in itertools.zip_longest(*by_slice) for a in pair if a is not None]
    for acq in mixed:
        acq.clear_flag(LAST_IN_MEASUREMENT)
    mixed[-1].set_flag(LAST_IN_MEASUREMENT)
    return _noise(items) + mixed


CONVENTIONS = {
    "as_simulated": lambda items: items,
    "per_phase_flags": _per_phase_flags,
    "slice_change_only": _no_slice_flags,
    "interleaved": _interleaved,
    "interleaved_per_phase_flags": lambda items: _per_phase_flags(_interleaved(items)),
    "interleaved_no_flags": lambda items: _no_slice_flags(_interleaved(items)),
}


@pytest.fixture(scope="module")
def scan(molli_raw: Path) -> tuple[Any, list[Any]]:
    """The 2-slice, 8-phase, 64^2, 8-coil MOLLI scan (16 of 64 lines per phase) and its readouts."""
    return raw_header_and_items(molli_raw)


def _fresh(scan: tuple[Any, list[Any]]) -> list[Any]:
    """Copies of the scan's readouts that a test may re-flag and reorder."""
    return [copy.deepcopy(a) for a in scan[1]]


def _feed(header: Any, items: list[Any], **properties: str) -> list[tuple[int | str, SliceBuffer]]:
    """Feed readouts to the buffer; return every slice it sent with the position of the readout that closed it."""
    builder = SliceBufferBuilder(header, AcquisitionBufferConfig.from_properties(properties))
    sent: list[tuple[int | str, SliceBuffer]] = []
    for position, acq in enumerate(items):
        sent += [(position, done) for done in builder.add(acq)]
    return sent + [("end", done) for done in builder.flush()]


def _images(chain: Any, header: Any, items: list[Any]) -> list[ismrmrd.Image]:
    out: list[Any] = []
    run_chain(chain, header, items, out.append)
    return sorted((i for i in out if isinstance(i, ismrmrd.Image)), key=lambda i: (i.slice, i.set))


@pytest.fixture(scope="module")
def todays_images(scan: tuple[Any, list[Any]]) -> list[ismrmrd.Image]:
    """Phase images of the file as simulated, buffered the way the chain did before (trigger=last_in_slice)."""
    chain = chain_variant("cartesian_multiphase", "Buffer", trigger="last_in_slice")
    return _images(chain, scan[0], _fresh(scan))


@pytest.mark.parametrize("convention", sorted(CONVENTIONS))
def test_every_convention_gives_todays_images(
    scan: tuple[Any, list[Any]], todays_images: list[ismrmrd.Image], convention: str
) -> None:
    images = _images(resolve_chain("cartesian_multiphase"), scan[0], CONVENTIONS[convention](_fresh(scan)))
    assert [(i.slice, i.set) for i in images] == [(i.slice, i.set) for i in todays_images]
    for ours, today in zip(images, todays_images, strict=True):
        np.testing.assert_array_equal(ours.data, today.data)
        assert ours.attribute_string == today.attribute_string


@pytest.mark.parametrize(
    ("convention", "closed_at", "logged"),
    [
        ("as_simulated", ("last of 0", "last of 1"), "slices closed by ACQ_LAST_IN_SLICE on their last readout"),
        ("per_phase_flags", ("last of 0", "last of 1"), "slices closed by per-phase ACQ_LAST_IN_SLICE flags"),
        (
            "slice_change_only",
            ("first of 1", "end"),
            "slices closed on a change of slice index: this stream sets no last-in-slice flags",
        ),
        ("interleaved", ("last of 0", "last of 1"), "interleaved slices (slice 0 reappeared after slice 1)"),
        ("interleaved_per_phase_flags", ("last of 0", "last of 1"), "slices closed by per-phase ACQ_LAST_IN_SLICE"),
        ("interleaved_no_flags", ("end", "end"), "interleaved slices (slice 0 reappeared after slice 1)"),
    ],
)
def test_each_slice_closes_as_soon_as_its_convention_says_it_is_complete(
    scan: tuple[Any, list[Any]],
    caplog: pytest.LogCaptureFixture,
    convention: str,
    closed_at: tuple[str, str],
    logged: str,
) -> None:
    items = CONVENTIONS[convention](_fresh(scan))
    positions = {
        f"{which} of {s}": [i for i, a in enumerate(items) if not a.is_flag_set(NOISE) and a.idx.slice == s][index]
        for s in (0, 1)
        for which, index in (("first", 0), ("last", -1))
    }
    with caplog.at_level(logging.INFO, logger="gadgets.buffering"):
        sent = _feed(scan[0], items)
    assert [b.slice for _, b in sent] == [0, 1]
    assert [where for where, _ in sent] == [positions.get(c, c) for c in closed_at]
    assert all(b.kdata.shape == (8, 8, 64, 64) and b.sampled.sum() == 8 * 16 for _, b in sent)
    messages = [r.getMessage() for r in caplog.records if r.name == "gadgets.buffering"]
    assert any(logged in m for m in messages), messages
    # logged once per stream, however many slices it concerns
    assert len(messages) == len(set(messages))


def test_a_readout_for_a_closed_slice_names_the_convention_and_the_trigger_that_works(
    scan: tuple[Any, list[Any]], todays_images: list[ismrmrd.Image]
) -> None:
    items = _no_slice_flags(_fresh(scan))
    straggler = copy.deepcopy(next(a for a in _imaging(items) if a.idx.slice == 0))
    straggler.scan_counter = 9999
    items.append(straggler)
    with pytest.raises(StreamError) as failure:  # NoiseAdjustGadget whitens readouts in place: give it copies
        _images(resolve_chain("cartesian_multiphase"), scan[0], copy.deepcopy(items))
    message = str(failure.value)
    assert "\n" not in message
    assert (
        "readout 9999 belongs to slice 0, which was already closed (on a change of slice index: this stream sets no "
        "last-in-slice flags; trigger=auto); set the buffer's trigger=end_of_stream" in message
    )
    # the suggested trigger works: the repeated line carries the same data
    images = _images(chain_variant("cartesian_multiphase", "Buffer", trigger="end_of_stream"), scan[0], items)
    for ours, today in zip(images, todays_images, strict=True):
        np.testing.assert_array_equal(ours.data, today.data)


def test_without_phase_limits_the_buffer_falls_back_to_the_first_flag_and_says_so(
    scan: tuple[Any, list[Any]], caplog: pytest.LogCaptureFixture
) -> None:
    header = copy.deepcopy(scan[0])
    header.encoding[0].encodingLimits.set = None
    with caplog.at_level(logging.INFO, logger="gadgets.buffering"):
        sent = _feed(header, _fresh(scan))
    assert [b.slice for _, b in sent] == [0, 1]
    assert "the header has no encodingLimits for 'set': slices close at their first ACQ_LAST_IN_SLICE" in caplog.text
    with pytest.raises(ValueError, match=r"slice 0: no readouts for phases \[0\] in 'set'; .* use trigger=auto"):
        _feed(header, _per_phase_flags(_fresh(scan)))


def _never_ending_slice(items: list[Any], counter: list[int]) -> Iterator[Any]:
    """Slice 0's readouts over and over (20 times the cap), unflagged: a slice no trigger closes. Counts the reads."""
    again = itertools.islice(itertools.cycle(_no_slice_flags(_imaging(items))[:128]), 20 * 1024)
    for acq in itertools.chain(_noise(items), again):
        counter[0] += 1
        yield acq


def test_a_slice_that_never_closes_is_stopped_at_the_readout_cap(scan: tuple[Any, list[Any]]) -> None:
    counter = [0]
    with pytest.raises(StreamError) as failure:
        run_chain(resolve_chain("t1_molli"), scan[0], _never_ending_slice(_fresh(scan), counter), lambda _: None)
    message = str(failure.value)
    assert "\n" not in message
    n_noise = len(_noise(scan[1]))  # the first imaging readout's scan counter
    # 64 lines x 8 phases promised, twice that allowed: the 1025th readout of the slice is refused
    assert (
        f"slice 0: readout {n_noise} would be its readout number 1025, more than the cap of 1024 readouts per slice "
        "(slice_readout_margin=2 x the 512 that the header's encodingLimits promise: 64 lines x 1 partitions x 8 "
        "phases in 'set') and trigger=auto has not closed the slice; raise slice_readout_margin" in message
    )
    # read no further than the refused readout and what the queue behind NoiseAdjustGadget holds (64 items)
    assert n_noise + 1025 <= counter[0] <= n_noise + 1025 + 64 + 1


def test_the_byte_cap_holds_when_the_header_allows_more(scan: tuple[Any, list[Any]]) -> None:
    header, items = scan[0], _fresh(scan)
    builder = SliceBufferBuilder(
        header, AcquisitionBufferConfig.from_properties({"slice_readout_margin": "16", "max_buffer_mb": "1"})
    )
    readout_bytes = 8 * 64 * 8  # coils x samples x complex64
    fit = int(1e6 // readout_bytes)  # noise readouts are skipped, not held

    def feed_forever() -> None:
        for acq in _never_ending_slice(items, [0]):
            builder.add(acq)

    with pytest.raises(ValueError, match=r"more than max_buffer_mb=1; raise max_buffer_mb$") as failure:
        feed_forever()
    assert builder.nbytes == fit * readout_bytes
    assert f"({fit} readouts of 1 open slices)" in str(failure.value)


def test_the_byte_cap_counts_the_k_space_a_slice_is_built_into(scan: tuple[Any, list[Any]]) -> None:
    # slice 0's 128 readouts hold 0.5 MB; its 8 x 8 x 64 x 64 complex64 k-space would take 2.1 MB more
    with pytest.raises(ValueError, match=r"slice 0's k-space \(8 phases x 8 coils x 64 x 64\) would make the buffer"):
        _feed(scan[0], _fresh(scan), max_buffer_mb="2")


def test_open_slices_are_capped_by_the_header_slice_count(scan: tuple[Any, list[Any]]) -> None:
    """Readouts of ever new slices, none complete: the 5th open slice is refused (2 x the header's 2 slices)."""
    first_phase = [a for a in _imaging(_fresh(scan)) if a.idx.slice == 0 and a.idx.set == 0]
    for number, acq in enumerate(first_phase):
        acq.idx.slice = number
    with pytest.raises(ValueError, match=r"opens slice 4 while 4 slices are open .* cap of 4 \(open_slice_margin=2 x"):
        _feed(scan[0], first_phase)


def _noise_readout(number: int, n_coils: int = 8, n_samples: int = 64) -> ismrmrd.Acquisition:
    acq = ismrmrd.Acquisition.from_array(np.full((n_coils, n_samples), number, dtype=np.complex64))
    acq.scan_counter = number
    acq.set_flag(NOISE)
    return acq


def test_noise_readouts_are_skipped(scan: tuple[Any, list[Any]]) -> None:
    """NoiseAdjustGadget uses the noise scan; the buffer builds the same slices with or without it."""
    noise = [_noise_readout(n) for n in range(300)]
    with_noise = _feed(scan[0], noise + _imaging(_fresh(scan)))
    without = _feed(scan[0], _imaging(_fresh(scan)))
    assert len(with_noise) == len(without) == 2
    for (_, a), (_, b) in zip(with_noise, without, strict=True):
        np.testing.assert_array_equal(a.kdata, b.kdata)


def test_spiral_header_is_refused_at_once(scan: tuple[Any, list[Any]]) -> None:
    header = copy.deepcopy(scan[0])
    header.encoding[0].trajectory = ismrmrd.xsd.trajectoryType("spiral")
    with pytest.raises(
        ValueError,
        match=r"^the header's encoding trajectory is spiral; AcquisitionBufferGadget needs Cartesian readouts; "
        r"the mrf_fisp chain reconstructs spiral MRF$",
    ):
        SliceBufferBuilder(header, AcquisitionBufferConfig())


def test_readout_with_a_trajectory_is_refused_at_once(scan: tuple[Any, list[Any]]) -> None:
    acq = _imaging(_fresh(scan))[0]
    radial = ismrmrd.Acquisition.from_array(acq.data, np.zeros((acq.number_of_samples, 2), np.float32))
    radial.scan_counter = 12
    builder = SliceBufferBuilder(scan[0], AcquisitionBufferConfig())
    with pytest.raises(
        ValueError,
        match=r"^readout 12 carries a 2-D k-space trajectory \(spiral or radial data\); AcquisitionBufferGadget needs "
        r"Cartesian readouts; the mrf_fisp chain reconstructs spiral MRF$",
    ):
        builder.add(radial)


def test_readout_longer_than_the_slice_readout_is_refused(scan: tuple[Any, list[Any]]) -> None:
    items = _imaging(_fresh(scan))[:16]
    long = ismrmrd.Acquisition.from_array(np.zeros((8, 128), np.complex64))
    long.scan_counter, long.center_sample = 77, 0
    long.set_flag(LAST_IN_SLICE)
    with pytest.raises(ValueError, match=r"readout 77 has 128 samples centred at 0, which do not fit the slice's 64"):
        _feed(scan[0], [*items, long], trigger="last_in_slice")


MOLLI_TI = [251.0, 400.0, 1251.0, 1400.0, 2251.0, 2400.0, 3251.0, 4251.0]
OTHER_TIMES = [10000.0, 100.0, 180.0, 260.0, 340.0, 420.0, 500.0, 580.0]


@pytest.mark.parametrize(
    ("list_name", "properties", "expected"),
    [
        ("SaturationTime_ms", {}, OTHER_TIMES),
        ("T2PrepDuration_ms", {}, OTHER_TIMES),
        ("SiteTimes_ms", {"prep_time_user_parameter": "SiteTimes_ms"}, OTHER_TIMES),
        ("SiteTimes_ms", {}, MOLLI_TI),
        ("SaturationTime_ms", {"prep_time_user_parameter": "SiteTimes_ms"}, MOLLI_TI),
    ],
)
def test_prep_times_come_from_the_list_of_the_headers_preparation_else_ti(
    scan: tuple[Any, list[Any]], list_name: str, properties: dict[str, str], expected: list[float]
) -> None:
    """A protocol's list (qmri_models.protocols) is found without naming it; a site's list when named; else TI."""
    header = ismrmrd.xsd.CreateFromDocument(scan[0].toXML().encode())
    assert list(header.sequenceParameters.TI) == MOLLI_TI
    header.userParameters = ismrmrd.xsd.userParametersType(
        userParameterDouble=[ismrmrd.xsd.userParameterDoubleType(name=list_name, value=t) for t in OTHER_TIMES]
    )
    (_, first), _ = _feed(header, _fresh(scan), trigger="last_in_slice", **properties)
    np.testing.assert_array_equal(first.prep_times_ms, expected)
