"""Cooperative interruption of long computations: the caller sets an event, the loops stop at their next check.

The science code knows nothing of streams or sockets. A caller that wants a computation to stop early (the stream
runtime, when a client has gone) runs it inside :func:`interruptible` with a ``threading.Event``; the long loops
(conjugate-gradient and Levenberg-Marquardt iterations, ESPIRiT power iterations, MC-dropout samples, dictionary
matching chunks) call :func:`check_interrupt` once per step, which raises :class:`Interrupted` once the event is set.
Outside :func:`interruptible` the check costs one context-variable lookup and never raises.
"""

import contextvars
import threading
from collections.abc import Iterator
from contextlib import contextmanager

_STOP: contextvars.ContextVar[threading.Event | None] = contextvars.ContextVar("qmri_interrupt", default=None)


class Interrupted(Exception):  # noqa: N818 - it names what happened, as KeyboardInterrupt does
    """The computation was stopped because its caller set the interrupt event."""


@contextmanager
def interruptible(stop: threading.Event) -> Iterator[None]:
    """Run the body so that every :func:`check_interrupt` inside it (in this thread) raises once ``stop`` is set.

    Parameters
    ----------
    stop : Set by the caller (from any thread) to ask the computation to stop.
    """
    token = _STOP.set(stop)
    try:
        yield
    finally:
        _STOP.reset(token)


def check_interrupt() -> None:
    """Raise :class:`Interrupted` if this thread runs inside :func:`interruptible` and its event is set."""
    stop = _STOP.get()
    if stop is not None and stop.is_set():
        raise Interrupted("the computation was asked to stop")
