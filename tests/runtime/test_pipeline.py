"""The threaded pipeline: order, pass-through, failures end the stream cleanly, bounded memory (backpressure)."""

import threading
import time
from collections.abc import Callable
from typing import Any

import pytest

from gadgets.basic import PassThroughConfig, pass_through
from gadgets.runtime.chain import Chain, Stage
from gadgets.runtime.pipeline import StreamError, run_chain
from gadgets.runtime.registry import GadgetSpec


def chain_of(*gadgets: Callable[[Any], None]) -> Chain:
    stages = tuple(
        Stage(
            f"g{i}", GadgetSpec(f"Test{i}", g, PassThroughConfig, "", consumes=(), produces=()), {}, PassThroughConfig()
        )
        for i, g in enumerate(gadgets)
    )
    return Chain(name="test", source="test", description="", stages=stages)


def doubler(connection: Any) -> None:
    connection.filter(int)
    for item in connection:
        connection.send(2 * item)


def test_items_flow_in_order_and_filtered_items_pass_untouched() -> None:
    out: list[Any] = []
    run_chain(chain_of(pass_through, doubler, pass_through), None, [1, "a", 2, 3.5, 3], out.append)
    assert out == [2, "a", 4, 3.5, 6]


def test_a_gadget_that_returns_early_loses_nothing() -> None:
    def first_only(connection: Any) -> None:
        for item in connection:
            connection.send(item * 10)
            return

    out: list[Any] = []
    run_chain(chain_of(first_only), None, range(5), out.append)
    assert out == [0, 1, 2, 3, 4]


def test_a_failing_gadget_ends_the_stream_and_leaves_no_thread() -> None:
    before = threading.active_count()

    def fails_on_three(connection: Any) -> None:
        for item in connection:
            if item == 3:
                raise ValueError("three is not allowed")
            connection.send(item)

    out: list[Any] = []
    endless = iter(range(10**9))  # the input would never end on its own
    with pytest.raises(StreamError, match=r"gadget 'g1' \(Test1\) failed: ValueError: three is not allowed"):
        run_chain(chain_of(pass_through, fails_on_three, pass_through), None, endless, out.append, queue_size=4)
    assert out == [0, 1, 2][: len(out)]
    deadline = time.monotonic() + 5
    while threading.active_count() > before and time.monotonic() < deadline:
        time.sleep(0.05)
    assert threading.active_count() == before


def test_input_errors_are_reported_as_the_input() -> None:
    def broken_input() -> Any:
        yield 1
        raise EOFError("truncated message")

    with pytest.raises(StreamError, match="input failed: EOFError: truncated message"):
        run_chain(chain_of(pass_through), None, broken_input(), lambda _: None)


def test_backpressure_bounds_what_is_read_ahead_of_a_slow_consumer() -> None:
    queue_size, n_stages = 4, 2
    read = 0
    max_ahead = 0
    consumed = 0

    def source() -> Any:
        nonlocal read
        for i in range(200):
            read += 1
            yield i

    def slow_sink(_: Any) -> None:
        nonlocal consumed, max_ahead
        consumed += 1
        max_ahead = max(max_ahead, read - consumed)
        time.sleep(0.001)

    run_chain(chain_of(pass_through, pass_through), None, source(), slow_sink, queue_size=queue_size)
    assert consumed == 200
    # each queue holds queue_size items, each thread holds at most one more
    assert max_ahead <= (n_stages + 1) * (queue_size + 1) + 1


def test_sink_failure_stops_everything() -> None:
    def sink(item: Any) -> None:
        if item == 5:
            raise BrokenPipeError("client gone")

    before = threading.active_count()
    with pytest.raises(BrokenPipeError):
        run_chain(chain_of(pass_through), None, iter(range(10**9)), sink, queue_size=2)
    deadline = time.monotonic() + 5
    while threading.active_count() > before and time.monotonic() < deadline:
        time.sleep(0.05)
    assert threading.active_count() == before
