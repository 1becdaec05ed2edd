"""Throughput of the MRD server against in-process serialization, on a simulated MOLLI scan.

What it measures
----------------
1. Baseline: ismrmrd's ``ProtocolSerializer`` writes config, header and every acquisition into memory and
   ``ProtocolDeserializer`` reads them back (both timed together, best of ``--repeats``).
2. Server, byte client (the target line): ``qmri serve`` runs as a separate process (as a scanner sees it); the
   client sends the stream's bytes, serialized beforehand as a scanner's own software would, and receives the echo
   into memory; timed from connect to the server closing the connection after CLOSE. Only then is the echo
   deserialized and every acquisition checked. This times the server's own work: deserialize, chain, serialize.
3. Server, Python client: the same through ``gadgets.runtime.client.send_stream``, which serializes and
   deserializes on the client side too (end to end, both processes Python, 2 cores).

All rates count the bytes of the stream one way (the baseline's serialized length). The ratio of the byte-client
path to the baseline is compared with the 0.70 target; the script never fails on timings (exit code 0). The first
connection is an untimed warm-up whose time is printed; so is the CPU time per stream of the server and client
processes on the Python-client path, which, unlike wall time, other load on the machine does not inflate.

Run it with::

    cd /work/main && .venv/bin/python bench/bench_server_throughput.py [--slices 12] [--repeats 3]
"""

import argparse
import gc
import io
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

import h5py
import ismrmrd
import numpy as np
from ismrmrd.serialization import ConfigFile, ProtocolDeserializer, ProtocolSerializer

from gadgets.runtime.client import send_stream
from gadgets.runtime.protocol import parse_header, read_messages
from gadgets.runtime.replay import raw_items
from qmri_models.simulation.raw_writer import write_raw
from qmri_models.simulation.scan import ScanSettings, simulate_scan

CHAIN = "passthrough.xml"
HOST = "127.0.0.1"
TARGET_RATIO = 0.70
QMRI = Path(sys.executable).with_name("qmri")


@dataclass
class Scan:
    """The scan held in memory: header and every acquisition, plus its size on the wire."""

    header: Any
    acquisitions: list[ismrmrd.Acquisition]
    stream_bytes: int


@dataclass
class Result:
    """One timed path."""

    path: str
    seconds: float
    n_acquisitions: int
    n_bytes: int
    cpu_s: dict[str, list[float]] = field(default_factory=dict)
    """CPU seconds per run by process (server path only): unlike wall time, not inflated by other load."""

    @property
    def acq_per_s(self) -> float:
        return self.n_acquisitions / self.seconds

    @property
    def mb_per_s(self) -> float:
        return self.n_bytes / self.seconds / 1e6


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--slices", type=int, default=12, help="MOLLI slices; each is 8 phases x matrix lines")
    parser.add_argument("--matrix", type=int, default=160)
    parser.add_argument("--coils", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=3, help="runs per path; the best counts")
    return parser.parse_args()


def simulate(raw: Path, args: argparse.Namespace) -> None:
    settings = ScanSettings(contrast="molli", matrix=args.matrix, n_coils=args.coils, n_slices=args.slices)
    write_raw(raw, settings, simulate_scan(settings))


def load_scan(raw: Path) -> Scan:
    with h5py.File(raw, "r") as f:
        xml = f["dataset"]["xml"][0]
        header = parse_header(xml.decode() if isinstance(xml, bytes) else str(xml))
        items = list(raw_items(f["dataset"]))
    acquisitions = [item for item in items if isinstance(item, ismrmrd.Acquisition)]
    return Scan(header, acquisitions, stream_size(header, acquisitions))


def write_stream(stream: BinaryIO, header: Any, acquisitions: list[ismrmrd.Acquisition]) -> None:
    """Write config, header, every acquisition and CLOSE, as the client sends them."""
    with ProtocolSerializer(stream) as serializer:
        serializer.serialize(ConfigFile(CHAIN))
        serializer.serialize(header)
        for acq in acquisitions:
            serializer.serialize(acq)


def stream_size(header: Any, acquisitions: list[ismrmrd.Acquisition]) -> int:
    buffer = io.BytesIO()
    write_stream(buffer, header, acquisitions)
    return buffer.tell()


def count_acquisitions(stream: BinaryIO) -> int:
    messages = ProtocolDeserializer(stream).deserialize()
    return sum(isinstance(m, ismrmrd.Acquisition) for m in messages)


def best_of(repeats: int, run: Callable[[], int]) -> tuple[float, int]:
    """Return the shortest wall time of ``repeats`` runs and the count the last run returned."""
    best, count = float("inf"), 0
    for _ in range(repeats):
        start = time.perf_counter()
        count = run()
        best = min(best, time.perf_counter() - start)
    return best, count


def bench_baseline(scan: Scan, repeats: int) -> Result:
    # Sized and touched before timing: a BytesIO growing to the stream's size costs page faults and copies that
    # vary from run to run (40-120 ms here) and that no socket path pays.
    buffer = io.BytesIO()
    buffer.write(bytes(scan.stream_bytes))

    def run() -> int:
        buffer.seek(0)
        write_stream(buffer, scan.header, scan.acquisitions)
        buffer.seek(0)
        return count_acquisitions(buffer)

    seconds, count = best_of(repeats, run)
    if count != len(scan.acquisitions):
        raise RuntimeError(f"baseline read back {count} of {len(scan.acquisitions)} acquisitions")
    return Result("in-process (de)serialize", seconds, count, scan.stream_bytes)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


def wait_for_port(port: int, server: subprocess.Popen[bytes], timeout_s: float = 60.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise RuntimeError(f"qmri serve exited with {server.returncode} before listening")
        try:
            with socket.create_connection((HOST, port), timeout=1.0):
                return
        except OSError:
            time.sleep(0.1)
    raise TimeoutError(f"qmri serve did not listen on {HOST}:{port} within {timeout_s:.0f} s")


def start_server(port: int, log_path: Path) -> subprocess.Popen[bytes]:
    with log_path.open("wb") as log:
        return subprocess.Popen(
            [str(QMRI), "serve", "--host", HOST, "--port", str(port)], stdout=log, stderr=subprocess.STDOUT
        )


def stop_server(server: subprocess.Popen[bytes]) -> None:
    server.terminate()
    try:
        server.wait(timeout=10)
    except subprocess.TimeoutExpired:
        server.kill()
        server.wait()


def check_echo(sent: list[ismrmrd.Acquisition], received: list[ismrmrd.Acquisition]) -> None:
    if len(received) != len(sent):
        raise RuntimeError(f"server echoed {len(received)} of {len(sent)} acquisitions")
    for a, b in zip(sent, received, strict=True):
        if a.scan_counter != b.scan_counter or not np.array_equal(a.data, b.data):
            raise RuntimeError(f"acquisition {a.scan_counter} came back as {b.scan_counter} or with other data")


def warm_up(scan: Scan, port: int, n: int = 64) -> float:
    """Send a short stream first and return its time: the first connection loads the gadget registry."""
    start = time.perf_counter()
    reply = send_stream(HOST, port, scan.header, scan.acquisitions[:n], config_file=CHAIN)
    if len(reply.acquisitions) != min(n, len(scan.acquisitions)) or reply.errors:
        raise RuntimeError(f"warm-up stream failed: {len(reply.acquisitions)} acquisitions back, {reply.errors}")
    return time.perf_counter() - start


def process_cpu_s(pid: int) -> float | None:
    """Return a process's user+system CPU seconds from /proc (None where there is no /proc)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def bench_server(scan: Scan, server: subprocess.Popen[bytes], port: int, repeats: int) -> Result:
    received: list[ismrmrd.Acquisition] = []
    server_cpu: list[float] = []
    client_cpu: list[float] = []

    def run() -> int:
        server_start, client_start = process_cpu_s(server.pid), time.process_time()
        reply = send_stream(HOST, port, scan.header, scan.acquisitions, config_file=CHAIN)
        client_cpu.append(time.process_time() - client_start)
        server_end = process_cpu_s(server.pid)
        if server_start is not None and server_end is not None:
            server_cpu.append(server_end - server_start)
        if reply.errors:
            raise RuntimeError(f"server reported: {reply.errors}")
        received[:] = reply.acquisitions
        return len(reply.acquisitions)

    seconds, count = best_of(repeats, run)
    check_echo(scan.acquisitions, received)
    cpu_s = {"server": server_cpu, "client": client_cpu}
    return Result("server passthrough, Python client", seconds, count, scan.stream_bytes, cpu_s)


def exchange_bytes(port: int, payload: bytes, reply: bytearray) -> int:
    """Send ``payload`` from a thread while receiving into ``reply`` until the server closes; return bytes received."""
    with socket.create_connection((HOST, port), timeout=120) as sock:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sender = threading.Thread(target=sock.sendall, args=(payload,), daemon=True)
        sender.start()
        view, got = memoryview(reply), 0
        while count := sock.recv_into(view[got:]):
            got += count
        sender.join()
    return got


def bench_server_bytes(scan: Scan, port: int, repeats: int) -> Result:
    payload = io.BytesIO()
    write_stream(payload, scan.header, scan.acquisitions)
    reply = bytearray(scan.stream_bytes + (1 << 20))
    received = 0

    def run() -> int:
        nonlocal received
        received = exchange_bytes(port, payload.getvalue(), reply)
        return received

    seconds, _ = best_of(repeats, run)
    messages = list(read_messages(io.BytesIO(bytes(reply[:received]))))
    errors = [m for m in messages if isinstance(m, str)]
    if errors:
        raise RuntimeError(f"server reported: {errors}")
    echoed = [m for m in messages if isinstance(m, ismrmrd.Acquisition)]
    check_echo(scan.acquisitions, echoed)
    return Result("server passthrough, byte client", seconds, len(echoed), scan.stream_bytes)


def print_table(scan: Scan, args: argparse.Namespace, baseline: Result, results: list[Result], first_s: float) -> None:
    size = scan.acquisitions[-1].data.shape
    print(
        f"scan: MOLLI {args.slices} slice(s), {args.matrix}^2, {args.coils} coils, fully sampled: "
        f"{len(scan.acquisitions)} acquisitions of {size[0]}x{size[1]} samples, "
        f"{scan.stream_bytes / 1e6:.1f} MB stream; best of {args.repeats}"
    )
    print(f"first connection (64 acquisitions, untimed warm-up): {first_s:.2f} s")
    rows = [("path", "acquisitions/s", "MB/s", "ratio")]
    for result in (baseline, *results):
        r = result.acq_per_s / baseline.acq_per_s
        rows.append((result.path, f"{result.acq_per_s:,.0f}", f"{result.mb_per_s:,.1f}", f"{r:.2f}"))
    widths = [max(len(row[i]) for row in rows) for i in range(4)]
    for row in rows:
        cells = [row[0].ljust(widths[0])] + [cell.rjust(w) for cell, w in zip(row[1:], widths[1:], strict=True)]
        print(" | ".join(cells))
    python_client = results[-1]
    cpu = ", ".join(f"{who} {statistics.median(v) * 1e3:.0f} ms" for who, v in python_client.cpu_s.items() if v)
    print(f"Python-client path CPU per stream (median): {cpu}; baseline path {baseline.seconds * 1e3:.0f} ms")
    ratio = results[0].acq_per_s / baseline.acq_per_s
    verdict = "PASS" if ratio >= TARGET_RATIO else "FAIL"
    print(f"target: server (byte client) / baseline >= {TARGET_RATIO:.2f}: {ratio:.2f} {verdict}")


def log_tail(path: Path, lines: int = 20) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no server log)"


def main() -> int:
    args = parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-server-") as tmp:
        raw, log_path = Path(tmp) / "molli.h5", Path(tmp) / "server.log"
        simulate(raw, args)
        scan = load_scan(raw)
        gc.collect()
        gc.freeze()  # the preloaded scan is the benchmark's, not the client's: keep it out of the GC's full scans
        baseline = bench_baseline(scan, args.repeats)
        port = free_port()
        server = start_server(port, log_path)
        try:
            wait_for_port(port, server)
            first_s = warm_up(scan, port)
            results = [bench_server_bytes(scan, port, args.repeats), bench_server(scan, server, port, args.repeats)]
        except Exception:
            print(f"server log (last lines):\n{log_tail(log_path)}", file=sys.stderr)
            raise
        finally:
            stop_server(server)
    print_table(scan, args, baseline, results, first_s)
    return 0


if __name__ == "__main__":
    sys.exit(main())
