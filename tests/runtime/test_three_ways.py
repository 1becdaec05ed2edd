"""Three ways in, one engine: replay, the TCP server and stream mode give identical images for one raw file."""

from pathlib import Path

import ismrmrd
import numpy as np
import pytest
from ismrmrd.image import ImageHeader

from gadgets.evaluate import read_series
from gadgets.runtime.chain import resolve_chain
from gadgets.runtime.client import send_stream
from gadgets.runtime.replay import replay
from gadgets.runtime.server import MrdServer
from tests.conftest import raw_header_and_items, stream_mode_images

pytestmark = pytest.mark.slow


def header_bytes(image: ismrmrd.Image) -> bytes:
    """The image header, without attribute_string_len (ismrmrd only fills it in when serializing)."""
    head = ImageHeader.from_buffer_copy(image.getHead())
    head.attribute_string_len = 0
    return bytes(head)


def test_replay_server_and_stream_give_identical_images(molli_raw: Path, tmp_path: Path, server: MrdServer) -> None:
    out = replay(molli_raw, resolve_chain("cartesian_multiphase"), tmp_path / "replay", progress=False)
    _, replayed = read_series(out, 1)

    header, items = raw_header_and_items(molli_raw)
    served = send_stream("127.0.0.1", server.port, header, items, config_file="cartesian_multiphase.xml")
    assert not served.texts

    streamed = stream_mode_images("cartesian_multiphase", header, items)

    assert len(replayed) == len(served.images) == len(streamed) == 16
    for a, b, c in zip(replayed, served.images, streamed, strict=True):
        assert np.array_equal(a.data, b.data)
        assert np.array_equal(a.data, c.data)
        assert header_bytes(a) == header_bytes(b) == header_bytes(c)
        assert a.attribute_string == b.attribute_string == c.attribute_string
