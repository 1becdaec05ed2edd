"""A few hundred mutated streams (seeded) against one server: none kills it, none hangs, every bad stream gets ERROR
and CLOSE, valid ones get their images, and threads and memory come back (bench/fuzz_server.py runs 10,000)."""

from pathlib import Path

import pytest

from bench.fuzz_server import FUZZ_LIMITS, fuzz_cases, fuzz_server, fuzz_target

pytestmark = pytest.mark.slow

N_STREAMS = 300
RSS_GROWTH_MB = 100.0
"""Bound on the resident set's growth over the streams. The allocator's pools swing by tens of MB between batches
of streams on this machine (measured with bench/fuzz_server.py); a leak of a stream's buffers would exceed it."""


def test_hundreds_of_mutated_streams_get_error_and_close_and_leave_nothing(tmp_path: Path) -> None:
    with fuzz_target(tmp_path, FUZZ_LIMITS) as (server, scan, probe):
        cases = fuzz_cases(scan, N_STREAMS, seed=0)
        report = fuzz_server(server, cases, clients=4, probe=probe)
    summary = "\n".join(report.lines())
    kinds = {kind for kind, _ in report.results}
    assert len(kinds) == 10, kinds  # every mutation was drawn
    assert sum(report.results.values()) == N_STREAMS
    assert report.deaths == 0, summary
    assert report.hangs == 0
    assert report.bad_without_error == 0
    assert report.valid_not_ok == 0
    for kind in ("random_bytes", "truncated", "huge_length", "unknown_id"):  # never valid: always ERROR, CLOSE
        assert {result for k, result in report.results if k == kind} == {"error"}, kind
    assert report.threads_end <= report.threads_start
    assert report.rss_end_mb - report.rss_start_mb < RSS_GROWTH_MB
