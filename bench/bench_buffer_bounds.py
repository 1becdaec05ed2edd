"""Memory the AcquisitionBufferGadget holds when a client sends a slice that never ends.

A simulated 64^2, 8-phase, 8-coil MOLLI header; then one slice's readouts, every one a new object, none flagged
ACQ_LAST_IN_SLICE, until ``--send-mb`` MB of readout data have been offered. The buffer either refuses the stream at
its readout cap (what it held then comes from its message) or holds everything. The peak resident set of the process
is sampled before and after (``ru_maxrss``), so the growth includes Python's overhead per readout.

Run it with::

    cd /work/main && .venv/bin/python bench/bench_buffer_bounds.py [--send-mb 203]
"""

import argparse
import resource
import time
from collections.abc import Iterator
from typing import Any

import ismrmrd
import numpy as np

from gadgets.runtime.chain import parse_chain
from gadgets.runtime.pipeline import StreamError, run_chain
from qmri_models.simulation.raw_writer import ismrmrd_header
from qmri_models.simulation.scan import ScanSettings

BUFFER_ONLY = (
    "<configuration><version>2</version><stream><gadget><name>Buffer</name><dll>qmri</dll>"
    "<classname>AcquisitionBufferGadget</classname></gadget></stream></configuration>"
)


MATRIX, N_COILS, N_PHASES = 64, 8, 8


def never_ending_slice(n_readouts: int, sent: list[int]) -> Iterator[ismrmrd.Acquisition]:
    """``n_readouts`` new readouts of slice 0 cycling through every line and phase, none flagged."""
    rng = np.random.default_rng(0)
    shape = (N_COILS, MATRIX)
    for number in range(n_readouts):
        acq = ismrmrd.Acquisition.from_array(
            (rng.standard_normal(shape) + 1j * rng.standard_normal(shape)).astype(np.complex64)
        )
        acq.scan_counter = number
        acq.center_sample = MATRIX // 2
        acq.idx.kspace_encode_step_1 = number % MATRIX
        acq.idx.set = (number // MATRIX) % N_PHASES
        sent[0] += 1
        yield acq


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--send-mb", type=float, default=203.0, help="readout data offered, in MB")
    args = parser.parse_args()
    header = ismrmrd_header(ScanSettings(contrast="molli", matrix=MATRIX, n_coils=N_COILS, acceleration=4))
    readout_bytes = N_COILS * MATRIX * np.dtype(np.complex64).itemsize
    n_readouts = int(args.send_mb * 1e6 // readout_bytes)
    sent = [0]
    outputs: list[Any] = []
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    start = time.perf_counter()
    try:
        run_chain(parse_chain(BUFFER_ONLY), header, never_ending_slice(n_readouts, sent), outputs.append)
        outcome = f"no refusal: {len(outputs)} slice(s) sent at the end"
    except StreamError as error:
        outcome = f"refused: {error}"
    growth_mb = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024
    print(f"offered {n_readouts} readouts of {readout_bytes} B = {n_readouts * readout_bytes / 1e6:.1f} MB")
    print(f"read {sent[0]} readouts ({sent[0] * readout_bytes / 1e6:.1f} MB) in {time.perf_counter() - start:.1f} s")
    print(f"peak resident set grew by {growth_mb:.1f} MB")
    print(outcome)


if __name__ == "__main__":
    main()
