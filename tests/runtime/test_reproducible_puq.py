"""PUQ is reproducible: one raw file through replay, the server and stream mode gives the same mean images,
uncertainty and maps, because the MC-dropout masks are seeded per slice from the stream (``mc_seed``): bit for bit
within one process and thread team, to rounding (``tests.conftest.ROUNDING``) across processes."""

from pathlib import Path

import ismrmrd
import numpy as np
import pytest

from gadgets.evaluate import read_series
from gadgets.runtime.chain import load_chain
from gadgets.runtime.client import send_stream
from gadgets.runtime.replay import replay
from gadgets.runtime.server import MrdServer
from tests.chain_variants import variant_text
from tests.conftest import ROUNDING, make_raw, max_difference_of_max, raw_header_and_items, stream_mode_images

pytestmark = pytest.mark.slow

SERIES = (1, 2, 11, 12)  # mean images, their uncertainty, T1 map, its SD


def by_series(images: list[ismrmrd.Image]) -> dict[int, np.ndarray]:
    return {s: np.stack([im.data for im in images if im.image_series_index == s]) for s in SERIES}


def replayed(raw: Path, chain_file: Path, out: Path) -> dict[int, np.ndarray]:
    images = replay(raw, load_chain(chain_file), out, progress=False)
    return {s: np.stack([im.data for im in read_series(images, s)[1]]) for s in SERIES}


def test_replay_serve_and_stream_give_bit_identical_puq_maps(tmp_path: Path, server: MrdServer) -> None:
    raw = make_raw(tmp_path / "molli_r8.h5", contrast="molli", acceleration=8, n_coils=8, seed=77)
    text = variant_text("t1_molli_puq", "Recon", mc_samples="4")
    chain_file = tmp_path / "puq4.xml"
    chain_file.write_text(text)

    from_replay = replayed(raw, chain_file, tmp_path / "replay")

    header, items = raw_header_and_items(raw)
    served = send_stream("127.0.0.1", server.port, header, items, config_text=text)
    assert not served.errors
    from_server = by_series(served.images)

    from_stream = by_series(stream_mode_images(str(chain_file), header, items, "--output", str(tmp_path / "stream")))

    for series in SERIES:
        assert from_replay[series].shape[0] == (8 if series in (1, 2) else 1)
        assert np.array_equal(from_replay[series], from_server[series]), series  # one process
        assert max_difference_of_max(from_stream[series], from_replay[series]) <= ROUNDING, series
    assert from_replay[2].max() > 0  # the samples differ from each other: there is an uncertainty to reproduce


def test_unseeded_mc_dropout_differs_between_replays(tmp_path: Path) -> None:
    """The control: with ``mc_seed=-1`` two replays of one file differ by far more than rounding, so the test above
    can fail."""
    raw = make_raw(tmp_path / "molli_r8.h5", contrast="molli", acceleration=8, n_coils=8, seed=77)
    chain_file = tmp_path / "unseeded.xml"
    chain_file.write_text(variant_text("t1_molli_puq", "Recon", mc_samples="4", mc_seed="-1"))
    first = replayed(raw, chain_file, tmp_path / "a")
    second = replayed(raw, chain_file, tmp_path / "b")
    assert max_difference_of_max(first[2], second[2]) > 100 * ROUNDING
    assert max_difference_of_max(first[11], second[11]) > 100 * ROUNDING
