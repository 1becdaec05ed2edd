"""Fuzz the MRD server: thousands of mutated streams against one server, and what it did with them.

Every stream starts from one small valid scan (a 32^2 MOLLI slice, 2 coils) and is mutated one way, chosen at
random (seeded): random bytes, truncations, flipped bytes, huge declared lengths, unknown message ids, broken or
hostile headers, messages out of order, malicious chain texts (site properties, entities, huge text, deep nesting),
and clients that reset the connection mid-stream; some stay valid as controls. Each stream's reply is classified:

- ``error``: ERROR text, then CLOSE (what a bad stream must get);
- ``ok``: CLOSE without ERROR (a valid stream, or a mutation that kept it valid, e.g. flipped sample bytes);
- ``no_close``: the server closed the connection without CLOSE;
- ``hang``: no CLOSE within the client's timeout;
- ``reset``: the client reset the connection itself (nothing to read).

The report prints deaths (handler exceptions, or a server that stops answering a valid stream), hangs, bad streams
without ERROR or CLOSE, and the server's RSS and thread count at the start and the end. Targets: 0 deaths, 0 hangs,
every bad stream answered with ERROR and CLOSE, RSS growth under 50 MB, threads back to the start count.

Run it with::

    cd /work/main && .venv/bin/python bench/fuzz_server.py [--streams 10000] [--seed 0] [--clients 4]

The test suite runs a few hundred of the same streams (tests/runtime/test_fuzz.py).
"""

import argparse
import contextlib
import io
import logging
import random
import socket
import struct
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import h5py
import ismrmrd
from ismrmrd.acquisition import AcquisitionHeader
from ismrmrd.image import ImageHeader
from ismrmrd.serialization import ConfigFile, ConfigText, ProtocolSerializer
from ismrmrd.waveform import WaveformHeader

from gadgets.runtime.chain import resolve_chain
from gadgets.runtime.protocol import ProtocolError, read_messages
from gadgets.runtime.server import MrdServer, ServerLimits
from gadgets.runtime.session import SiteSettings
from qmri_models.simulation.raw_writer import write_raw
from qmri_models.simulation.scan import ScanSettings, simulate_scan

CONFIG_FILE, CONFIG_TEXT, HEADER, CLOSE, TEXT = 1, 2, 3, 4, 5
ACQUISITION, IMAGE, WAVEFORM, NDARRAY = 1008, 1022, 1026, 1030
KNOWN_IDS = {CONFIG_FILE, CONFIG_TEXT, HEADER, CLOSE, TEXT, ACQUISITION, IMAGE, WAVEFORM, NDARRAY}
CHAINS = ("passthrough", "cartesian_multiphase", "t1_molli")
"""Chains the valid streams name: cheap ones, so that thousands of streams take minutes."""
WARM_UP_CHAINS = (*CHAINS, "t1_molli_puq")
"""One valid stream through each before RSS is first measured (malicious chain texts may run the PUQ chain): the
first use of a chain loads modules and fills the allocator's pools, which is not growth."""
REPLY_TIMEOUT_S = 60.0


@dataclass(frozen=True)
class BaseScan:
    """The valid scan every stream is mutated from: its header and readouts."""

    header: ismrmrd.xsd.ismrmrdHeader
    items: list[ismrmrd.Acquisition]

    def frames(self, config: Any) -> list[bytes]:
        """Return the valid stream as a list of serialized messages: config, header, readouts, CLOSE."""
        return [_serialized(config), _serialized(self.header), *(_serialized(a) for a in self.items), _close()]


def base_scan(folder: Path) -> BaseScan:
    """Return a small simulated MOLLI scan (32^2, 2 coils, one slice, fully sampled)."""
    settings = ScanSettings(contrast="molli", matrix=32, n_coils=2, acceleration=1, snr=50.0, seed=5)
    path = folder / "fuzz_base.h5"
    write_raw(path, settings, simulate_scan(settings))
    with h5py.File(path, "r") as f:
        header = ismrmrd.xsd.CreateFromDocument(f["dataset"]["xml"][0])
    with ismrmrd.Dataset(str(path), "dataset", create_if_needed=False) as dataset:
        items = [dataset.read_acquisition(i) for i in range(dataset.number_of_acquisitions())]
    return BaseScan(header, items)


def _serialized(message: Any) -> bytes:
    buffer = io.BytesIO()
    ProtocolSerializer(buffer).serialize(message)
    return buffer.getvalue()


def _close() -> bytes:
    return struct.pack("<H", CLOSE)


def _length_frame(message_id: int, data: bytes) -> bytes:
    return struct.pack("<HI", message_id, len(data)) + data


@dataclass(frozen=True)
class FuzzCase:
    """One mutated stream: its kind, its bytes, and whether the client resets the connection after sending."""

    kind: str
    payload: bytes
    reset: bool = False

    @property
    def valid(self) -> bool:
        """Whether the stream is unmutated (a control)."""
        return self.kind == "valid"


# ---------------------------------------------------------------------------------------------------- mutations


def _valid(rng: random.Random, scan: BaseScan) -> FuzzCase:
    return FuzzCase("valid", b"".join(scan.frames(ConfigFile(rng.choice(CHAINS)))))


def _random_bytes(rng: random.Random, scan: BaseScan) -> FuzzCase:
    return FuzzCase("random_bytes", rng.randbytes(rng.randint(0, 4096)))


def _truncated(rng: random.Random, scan: BaseScan) -> FuzzCase:
    data = b"".join(scan.frames(ConfigFile(rng.choice(CHAINS))))
    return FuzzCase("truncated", data[: rng.randrange(len(data) - 1)])


def _bit_flips(rng: random.Random, scan: BaseScan) -> FuzzCase:
    data = bytearray(b"".join(scan.frames(ConfigFile(rng.choice(CHAINS)))))
    for _ in range(rng.randint(1, 20)):
        data[rng.randrange(len(data))] ^= 1 << rng.randrange(8)
    return FuzzCase("bit_flips", bytes(data))


def _huge_frame(rng: random.Random) -> bytes:
    which = rng.randrange(7)
    if which < 3:
        message_id = (CONFIG_TEXT, HEADER, TEXT)[which]
        return struct.pack("<HI", message_id, rng.choice([0xFFFFFFFF, 1 << 30, (4 << 20) + 1]))
    if which == 3:
        head = AcquisitionHeader()
        head.number_of_samples, head.active_channels = rng.choice([65535, 4096]), rng.choice([2, 512, 65535])
        head.trajectory_dimensions = rng.choice([0, 2, 255])
        return struct.pack("<H", ACQUISITION) + bytes(head)
    if which == 4:
        head = ImageHeader()
        head.data_type, head.channels = ismrmrd.DATATYPE_CXDOUBLE, rng.choice([1, 64, 65535])
        head.matrix_size[:] = (rng.choice([4096, 65535]),) * 3
        return struct.pack("<H", IMAGE) + bytes(head) + struct.pack("<Q", rng.choice([0, 1 << 40]))
    if which == 5:
        head = WaveformHeader()
        head.number_of_samples, head.channels = 65535, 65535
        return struct.pack("<H", WAVEFORM) + bytes(head)
    return struct.pack("<HHHH", NDARRAY, 4, 1, 3) + struct.pack("<3Q", *(rng.choice([1 << 20, 1 << 40]),) * 3)


def _huge_length(rng: random.Random, scan: BaseScan) -> FuzzCase:
    frames = scan.frames(ConfigFile(rng.choice(CHAINS)))
    at = rng.randrange(len(frames))
    return FuzzCase("huge_length", b"".join(frames[:at]) + _huge_frame(rng) + rng.randbytes(rng.randint(0, 64)))


def _unknown_id(rng: random.Random, scan: BaseScan) -> FuzzCase:
    frames = scan.frames(ConfigFile(rng.choice(CHAINS)))
    message_id = rng.choice([i for i in (0, 6, 7, 999, 1000, 1023, 65535, rng.randrange(65536)) if i not in KNOWN_IDS])
    at = rng.randrange(len(frames))
    junk = struct.pack("<H", message_id) + rng.randbytes(rng.randint(0, 64))
    return FuzzCase("unknown_id", b"".join(frames[:at]) + junk + b"".join(frames[at:]))


def _hostile_header_xml(rng: random.Random, xml: str) -> str:
    which = rng.randrange(7)
    if which == 0:  # a random cut
        start = rng.randrange(len(xml))
        return xml[:start] + xml[start + rng.randint(1, 200) :]
    if which == 1:  # no encoding
        return xml.split("<encoding>")[0] + "</ismrmrdHeader>"
    if which == 2:  # absurd sizes
        return xml.replace("<x>32</x>", f"<x>{rng.choice([0, 65535, 2**31 - 1, -5])}</x>", 1)
    if which == 3:  # billion laughs
        laughs = '<!DOCTYPE h [<!ENTITY a "aaaaaaaaaa">' + "".join(
            f'<!ENTITY {chr(98 + i)} "{("&" + chr(97 + i) + ";") * 10}">' for i in range(8)
        )
        return laughs + "]>" + xml.replace("Simulated^Phantom", "&i;")
    if which == 4:  # external entity
        return '<!DOCTYPE h [<!ENTITY x SYSTEM "file:///etc/passwd">]>' + xml.replace("Simulated^Phantom", "&x;")
    if which == 5:  # not XML at all
        return rng.randbytes(rng.randint(1, 300)).decode("latin-1")
    return xml.replace("<maximum>7</maximum>", "<maximum>65535</maximum>")  # limits that promise 65536 phases


def _bad_header(rng: random.Random, scan: BaseScan) -> FuzzCase:
    frames = scan.frames(ConfigFile(rng.choice(CHAINS)))
    header = _length_frame(HEADER, _hostile_header_xml(rng, scan.header.toXML()).encode("utf-8", "replace"))
    return FuzzCase("bad_header", frames[0] + header + b"".join(frames[2:]))


def _out_of_order(rng: random.Random, scan: BaseScan) -> FuzzCase:
    frames = scan.frames(ConfigFile(rng.choice(CHAINS)))
    which = rng.randrange(4)
    if which == 0:  # swap two messages
        i, j = rng.randrange(len(frames) - 1), rng.randrange(len(frames) - 1)
        frames[i], frames[j] = frames[j], frames[i]
    elif which == 1:  # a second config or header mid-data
        frames.insert(rng.randrange(2, len(frames)), rng.choice(frames[:2]))
    elif which == 2:  # data before the header
        frames = [frames[0], *frames[2:5], frames[1], *frames[5:]]
    else:  # the readouts in random order, flags and all
        middle = frames[2:-1]
        rng.shuffle(middle)
        frames = [*frames[:2], *middle, frames[-1]]
    return FuzzCase("out_of_order", b"".join(frames))


def _malicious_chain_text(rng: random.Random) -> str:
    shipped = Path(resolve_chain(rng.choice(("t1_molli", "t1_molli_puq", "cartesian_multiphase"))).source).read_text()
    which = rng.randrange(8)
    if which == 0:
        return shipped.replace('name="folder" value="dicom"', 'name="folder" value="/etc/cron.d"')
    if which == 1:
        return shipped.replace('name="node_host" value=""', 'name="node_host" value="10.1.2.3"')
    if which == 2:
        return shipped.replace('name="weights" value="t1"', 'name="weights" value="/etc/shadow"')
    if which == 3:
        return '<!DOCTYPE c [<!ENTITY e SYSTEM "file:///etc/passwd">]><configuration>&e;</configuration>'
    if which == 4:
        return "<configuration>" + "<a>" * 5000 + "</a>" * 5000 + "</configuration>"
    if which == 5:
        return shipped.replace('value="cg_sense"', f'value="{"x" * rng.choice([300, 100_000])}"')
    if which == 6:
        return shipped.replace("CartesianReconGadget", "os.system")
    return shipped.replace('name="cg_iterations" value="10"', 'name="cg_iterations" value="1000000"')


def _malicious_chain(rng: random.Random, scan: BaseScan) -> FuzzCase:
    frames = scan.frames(ConfigText(_malicious_chain_text(rng)))
    return FuzzCase("malicious_chain", b"".join(frames))


def _disconnect(rng: random.Random, scan: BaseScan) -> FuzzCase:
    data = b"".join(scan.frames(ConfigFile(rng.choice(CHAINS))))
    return FuzzCase("disconnect", data[: rng.randrange(len(data))], reset=True)


MUTATIONS: tuple[Callable[[random.Random, BaseScan], FuzzCase], ...] = (
    _valid,
    _random_bytes,
    _truncated,
    _bit_flips,
    _huge_length,
    _unknown_id,
    _bad_header,
    _out_of_order,
    _malicious_chain,
    _disconnect,
)


def fuzz_cases(scan: BaseScan, n: int, seed: int) -> list[FuzzCase]:
    """Return ``n`` streams, each mutated one way chosen by a generator seeded with ``seed`` (the same every run)."""
    rng = random.Random(seed)  # noqa: S311 - reproducible fuzzing, not cryptography
    return [rng.choice(MUTATIONS)(rng, scan) for _ in range(n)]


# ---------------------------------------------------------------------------------------------------- running


def run_case(port: int, case: FuzzCase, timeout_s: float = REPLY_TIMEOUT_S) -> str:
    """Send one stream and return how it was answered: error, ok, no_close, hang or reset."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout_s) as sock:
        if case.reset:
            with contextlib.suppress(OSError):
                sock.sendall(case.payload)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            return "reset"

        def send() -> None:
            with contextlib.suppress(OSError):  # the server may stop reading early; its reply says why
                sock.sendall(case.payload)
                sock.shutdown(socket.SHUT_WR)

        sender = threading.Thread(target=send, daemon=True)
        sender.start()
        try:
            with sock.makefile("rb") as rfile:
                reply = list(read_messages(rfile))
        except TimeoutError:
            return "hang"
        except (ProtocolError, OSError):
            return "no_close"
        finally:
            sender.join(timeout_s)
    errors = [m for m in reply if isinstance(m, str) and m.startswith("ERROR")]
    return "error" if errors and reply[-1] is errors[-1] else "ok"


def rss_mb() -> float:
    """This process's resident set in MiB (Linux)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


@dataclass
class FuzzReport:
    """What the server did with the streams."""

    results: Counter[tuple[str, str]] = field(default_factory=Counter)
    """(kind, result) -> streams."""
    deaths: int = 0
    """Handler exceptions (logged with their traceback) plus one if the server failed the final valid stream."""
    answered_at_end: bool = True
    """Whether the server answered a valid stream after the fuzzing."""
    rss_start_mb: float = 0.0
    rss_end_mb: float = 0.0
    threads_start: int = 0
    threads_end: int = 0
    wall_s: float = 0.0

    @property
    def hangs(self) -> int:
        """Streams that got no CLOSE within the client's timeout."""
        return sum(n for (_, result), n in self.results.items() if result == "hang")

    @property
    def bad_without_error(self) -> int:
        """Mutated streams (not resets) that were not answered with ERROR then CLOSE, nor with CLOSE alone."""
        return sum(n for (kind, result), n in self.results.items() if result == "no_close" and kind != "disconnect")

    @property
    def valid_not_ok(self) -> int:
        """Unmutated streams that did not get their images and CLOSE without ERROR."""
        return sum(n for (kind, result), n in self.results.items() if kind == "valid" and result != "ok")

    def lines(self) -> list[str]:
        """Return the report for people."""
        kinds = sorted({kind for kind, _ in self.results})
        columns = ("error", "ok", "no_close", "hang", "reset")
        out = [f"{'kind':<16}" + "".join(f"{c:>10}" for c in columns)]
        out += [f"{k:<16}" + "".join(f"{self.results[(k, c)]:>10}" for c in columns) for k in kinds]
        total = sum(self.results.values())
        out += [
            f"streams {total} in {self.wall_s:.0f} s; deaths {self.deaths} (a valid stream answered at the end: "
            f"{'yes' if self.answered_at_end else 'no'}); hangs {self.hangs}; "
            f"bad streams without ERROR or CLOSE {self.bad_without_error}; "
            f"valid streams not answered {self.valid_not_ok}",
            f"RSS {self.rss_start_mb:.1f} -> {self.rss_end_mb:.1f} MiB ({self.rss_end_mb - self.rss_start_mb:+.1f}); "
            f"threads {self.threads_start} -> {self.threads_end}",
        ]
        return out


def fuzz_server(
    server: MrdServer,
    cases: list[FuzzCase],
    *,
    clients: int = 4,
    probe: Callable[[str], bool],
    on_case: Callable[[int], None] | None = None,
) -> FuzzReport:
    """Run ``cases`` against a running server from ``clients`` concurrent clients and return the report.

    ``probe(chain)`` sends a valid stream through a chain and says whether it was answered well; a server that fails
    it at the end counts as dead. RSS and threads are measured after one probe per chain of :data:`WARM_UP_CHAINS`,
    and at the end once every handler has finished.
    """
    report = FuzzReport()
    for chain in WARM_UP_CHAINS:
        probe(chain)
    _wait_for_handlers()
    report.rss_start_mb, report.threads_start = rss_mb(), threading.active_count()
    start = time.perf_counter()
    lock = threading.Lock()
    pending = iter(enumerate(cases))

    def client() -> None:
        while True:
            with lock:
                number, case = next(pending, (-1, None))
            if case is None:
                return
            result = run_case(server.port, case)
            with lock:
                report.results[(case.kind, result)] += 1
                if on_case is not None:
                    on_case(number)

    workers = [threading.Thread(target=client, daemon=True) for _ in range(clients)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    report.wall_s = time.perf_counter() - start
    _wait_for_handlers()
    report.answered_at_end = probe("t1_molli")
    _wait_for_handlers()
    report.deaths = server.internal_errors + (0 if report.answered_at_end else 1)
    report.rss_end_mb, report.threads_end = rss_mb(), threading.active_count()
    return report


def _wait_for_handlers(timeout_s: float = 60.0) -> None:
    """Wait until no connection handler thread of the server runs (each ends after its client's CLOSE)."""
    deadline = time.monotonic() + timeout_s
    while any("process_request_thread" in t.name for t in threading.enumerate()) and time.monotonic() < deadline:
        time.sleep(0.05)


@contextlib.contextmanager
def fuzz_target(folder: Path, limits: ServerLimits) -> Any:
    """Yield a running server (output under ``folder``) and a probe that sends it one valid stream."""
    server = MrdServer("127.0.0.1", 0, site=SiteSettings(output_dir=folder / "output"), limits=limits)
    server.start_in_background()
    scan = base_scan(folder)

    def probe(chain: str) -> bool:
        return run_case(server.port, FuzzCase("valid", b"".join(scan.frames(ConfigFile(chain))))) == "ok"

    try:
        yield server, scan, probe
    finally:
        server.shutdown()
        server.server_close()


FUZZ_LIMITS = ServerLimits(max_connections=8, start_timeout_s=5.0, idle_timeout_s=5.0)
"""The server's limits under fuzzing: short timeouts, so a stream that stops mid-message ends quickly."""


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--streams", type=int, default=10_000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--clients", type=int, default=4, help="concurrent clients")
    args = parser.parse_args()
    logging.basicConfig(level=logging.CRITICAL)  # thousands of bad streams: their ERROR lines are the point, not news
    logging.getLogger("gadgets.runtime.server").setLevel(logging.ERROR)  # but a handler's exception is news
    with tempfile.TemporaryDirectory() as tmp, fuzz_target(Path(tmp), FUZZ_LIMITS) as (server, scan, probe):
        cases = fuzz_cases(scan, args.streams, args.seed)
        step = max(1, args.streams // 20)

        def on_case(number: int) -> None:
            if number % step == 0:
                print(f"  {number} / {args.streams}", file=sys.stderr, flush=True)

        report = fuzz_server(server, cases, clients=args.clients, probe=probe, on_case=on_case)
    print(f"fuzz_server: {args.streams} streams, seed {args.seed}, {args.clients} clients, limits {FUZZ_LIMITS}")
    for line in report.lines():
        print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
