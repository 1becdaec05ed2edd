"""Our gadgets under gadgetron-python's own Connection (the external Python gadget contract of Gadgetron)."""

import socket
import threading
from pathlib import Path

import ismrmrd
import numpy as np
import pytest
from gadgetron.external.connection import Connection as GadgetronConnection
from ismrmrd.serialization import ConfigText, ProtocolSerializer

from gadgets.basic import pass_through
from gadgets.output import ImageSeriesConfig
from gadgets.runtime.protocol import ProtocolError, read_messages
from tests.conftest import raw_header_and_items

EXTERNAL_CONFIG = '<configuration><property name="series_index" value="7"/><property name="data_role" value="T1"/>'
EXTERNAL_CONFIG += "</configuration>"


def test_pass_through_and_properties_under_gadgetron_python(molli_raw: Path) -> None:
    header, items = raw_header_and_items(molli_raw)
    acquisitions = [item for item in items if isinstance(item, ismrmrd.Acquisition)][:30]
    gadgetron_end, our_end = socket.socketpair()
    with gadgetron_end, our_end, our_end.makefile("wb") as wfile, our_end.makefile("rb") as rfile:

        def send() -> None:  # what Gadgetron's parent process sends an external gadget
            with ProtocolSerializer(wfile) as serializer:
                serializer.serialize(ConfigText(EXTERNAL_CONFIG))
                serializer.serialize(header)
                for acq in acquisitions:
                    serializer.serialize(acq)

        sender = threading.Thread(target=send)
        sender.start()
        connection = GadgetronConnection(gadgetron_end)
        config = ImageSeriesConfig.from_connection(connection)
        assert (config.series_index, config.data_role) == (7, "T1")
        pass_through(connection)
        sender.join()
        gadgetron_end.shutdown(socket.SHUT_WR)  # gadgetron-python sends CLOSE only when it closes the connection
        echoed = []
        with pytest.raises(ProtocolError, match="without CLOSE"):
            echoed.extend(m for m in read_messages(rfile) if isinstance(m, ismrmrd.Acquisition))  # type: ignore[arg-type]
    assert len(echoed) == len(acquisitions)
    for sent, back in zip(acquisitions, echoed, strict=True):
        assert back.scan_counter == sent.scan_counter
        assert np.array_equal(back.data, sent.data)
