"""The FISP-MRF acquisition schedule: flip angle and TR of every frame, TE, and the inversion time before the train.

A schedule is a value: frozen, validated on construction, serialised to a JSON-able dict with its floats exact (the
simulator stores it in the raw file's header so the reconstruction rebuilds the same dictionary), and named by a
digest of that dict (``key``), which keys the dictionary cache.

The header contract: a raw file's ISMRMRD header carries the acquired frames' schedule as ``to_json`` in the
``userParameterString`` named ``SCHEDULE_PARAMETER`` (the untruncated one in ``FULL_SCHEDULE_PARAMETER``);
``schedule_from_header`` reads it back.

``jiang_schedule`` makes a schedule of the kind of Jiang et al. 2015 (MRF-FISP): half-sine flip-angle lobes of
different peak angles separated by short gaps, and a smooth Perlin-noise TR.
"""

import hashlib
import json
import math
from dataclasses import dataclass
from typing import Any

import numpy as np

LOBE_PEAKS_DEG: tuple[float, ...] = (55.0, 70.0, 35.0, 62.0, 45.0)
"""Peak flip angle of each lobe of ``jiang_schedule``, cycled when there are more lobes than peaks, degrees."""

_FIELDS = ("flip_angles_deg", "tr_ms", "te_ms", "ti_ms")

SCHEDULE_PARAMETER = "mrf_schedule"
"""``userParameterString`` of the header holding the acquired frames' schedule as ``FispSchedule.to_json``."""
FULL_SCHEDULE_PARAMETER = "mrf_schedule_full"
"""``userParameterString`` of the header holding the untruncated schedule as ``FispSchedule.to_json``."""


@dataclass(frozen=True)
class FispSchedule:
    """An inversion-prepared FISP-MRF train: inversion, ``ti_ms`` of recovery, then one excitation per frame.

    Each frame is an excitation (RF phase constant), the readout at ``te_ms`` and an unbalanced gradient that dephases
    by one cycle before the next excitation, ``tr_ms`` after this one. Array fields are stored as tuples of floats so
    the schedule is hashable and compares exactly; any sequence of numbers is accepted.
    """

    flip_angles_deg: tuple[float, ...]
    """Flip angle of every frame, degrees in [0, 180]. Shape `(frames,)`."""
    tr_ms: tuple[float, ...]
    """Repetition time of every frame (excitation to next excitation), ms. Shape `(frames,)`."""
    te_ms: float
    """Echo time (excitation to the sampled signal), ms, at least 0 and below every TR."""
    ti_ms: float
    """Inversion time (inversion pulse to the first excitation), ms, at least 0."""

    def __post_init__(self) -> None:
        flips = tuple(float(a) for a in self.flip_angles_deg)
        trs = tuple(float(t) for t in self.tr_ms)
        object.__setattr__(self, "flip_angles_deg", flips)
        object.__setattr__(self, "tr_ms", trs)
        object.__setattr__(self, "te_ms", float(self.te_ms))
        object.__setattr__(self, "ti_ms", float(self.ti_ms))
        if not flips:
            raise ValueError("a FISP schedule needs at least one frame, got 0 flip angles")
        if len(trs) != len(flips):
            raise ValueError(f"tr_ms has {len(trs)} frames but flip_angles_deg has {len(flips)}")
        bad_flip = next((a for a in flips if not 0.0 <= a <= 180.0), None)
        if bad_flip is not None:
            raise ValueError(f"flip angles must be in [0, 180] degrees, got {bad_flip}")
        bad_tr = next((t for t in trs if not 0.0 < t < math.inf), None)
        if bad_tr is not None:
            raise ValueError(f"TRs must be positive and finite, got {bad_tr} ms")
        if not 0.0 <= self.te_ms < min(trs):
            raise ValueError(f"te_ms must be in [0, shortest TR {min(trs)} ms), got {self.te_ms}")
        if not 0.0 <= self.ti_ms < math.inf:
            raise ValueError(f"ti_ms must be non-negative and finite, got {self.ti_ms}")

    @property
    def n_frames(self) -> int:
        """Number of frames (excitations) of the train."""
        return len(self.flip_angles_deg)

    def truncated(self, n_frames: int) -> "FispSchedule":
        """Return the schedule of the first ``n_frames`` frames (a shortened acquisition, e.g. the paper's N/5)."""
        if not 1 <= n_frames <= self.n_frames:
            raise ValueError(f"n_frames must be in [1, {self.n_frames}], got {n_frames}")
        return FispSchedule(self.flip_angles_deg[:n_frames], self.tr_ms[:n_frames], self.te_ms, self.ti_ms)

    def to_dict(self) -> dict[str, Any]:
        """Return the schedule as a JSON-able dict of floats and lists of floats (exact through ``json``)."""
        return {
            "flip_angles_deg": list(self.flip_angles_deg),
            "tr_ms": list(self.tr_ms),
            "te_ms": self.te_ms,
            "ti_ms": self.ti_ms,
        }

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> "FispSchedule":
        """Return the schedule of a dict made by ``to_dict``; missing or unknown keys are an error."""
        missing = [name for name in _FIELDS if name not in values]
        unknown = sorted(set(values) - set(_FIELDS))
        if missing or unknown:
            raise ValueError(f"FISP schedule dict: missing keys {missing}, unknown keys {unknown}")
        return cls(values["flip_angles_deg"], values["tr_ms"], values["te_ms"], values["ti_ms"])

    def to_json(self) -> str:
        """Return the canonical JSON text of ``to_dict`` (sorted keys, no spaces)."""
        return json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":"))

    @classmethod
    def from_json(cls, text: str) -> "FispSchedule":
        """Return the schedule of a JSON text made by ``to_json``."""
        return cls.from_dict(json.loads(text))

    def key(self) -> str:
        """Return the sha256 hex digest of the canonical JSON: equal schedules, equal keys."""
        return hashlib.sha256(self.to_json().encode()).hexdigest()


def schedule_from_header(header: Any, *, full: bool = False) -> FispSchedule:
    """Return the FISP schedule a raw file's header records.

    Parameters
    ----------
    header : Parsed ISMRMRD header (``ismrmrd.xsd.ismrmrdHeader``) of a spiral MRF scan.
    full : Return the untruncated schedule instead of the acquired frames'.

    Returns
    -------
    The schedule, equal to the one written.

    Raises
    ------
    ValueError
        If the header has no such user parameter.
    """
    name = FULL_SCHEDULE_PARAMETER if full else SCHEDULE_PARAMETER
    strings = header.userParameters.userParameterString if header.userParameters is not None else []
    for parameter in strings:
        if parameter.name == name:
            return FispSchedule.from_json(parameter.value)
    raise ValueError(
        f"the header has no userParameterString {name!r} (the FISP flip-angle and TR schedule as JSON); "
        "it does not describe an MRF scan, and the dictionary cannot be built"
    )


def jiang_schedule(
    n_frames: int = 1000,
    *,
    seed: int = 0,
    lobe_frames: int = 200,
    gap_frames: int = 10,
    lobe_peaks_deg: tuple[float, ...] = LOBE_PEAKS_DEG,
    floor_deg: float = 5.0,
    tr_range_ms: tuple[float, float] = (11.5, 14.5),
    te_ms: float = 1.908,
    ti_ms: float = 18.0,
) -> FispSchedule:
    """Return a FISP-MRF schedule of the Jiang et al. 2015 kind.

    Flip angles: consecutive lobes of ``lobe_frames`` frames; a lobe is a half sine rising from ``floor_deg`` to its
    peak and back, followed by ``gap_frames`` frames at ``floor_deg``. TR: 1-D Perlin gradient noise (three octaves,
    lattice spacings 64, 32 and 16 frames) from a generator seeded with ``seed``, scaled to span ``tr_range_ms`` and
    rounded to 10 us; equal bounds give a constant TR. TE and TI default to the MRF-IDDPM paper's 1.908 and 18 ms.

    Parameters
    ----------
    n_frames : Number of frames.
    seed : Seed of the TR noise.
    lobe_frames : Frames per lobe, gap included.
    gap_frames : Frames at ``floor_deg`` that end each lobe.
    lobe_peaks_deg : Peak flip angle of each lobe, degrees, cycled.
    floor_deg : Flip angle at the ends of the lobes and in the gaps, degrees.
    tr_range_ms : Shortest and longest TR, ms.
    te_ms : Echo time, ms.
    ti_ms : Inversion time, ms.

    Returns
    -------
    The schedule.
    """
    if n_frames < 1:
        raise ValueError(f"n_frames must be at least 1, got {n_frames}")
    if not 0 <= gap_frames < lobe_frames:
        raise ValueError(f"gap_frames must be in [0, lobe_frames={lobe_frames}), got {gap_frames}")
    if not lobe_peaks_deg:
        raise ValueError("lobe_peaks_deg must name at least one peak angle, got none")
    low_ms, high_ms = tr_range_ms
    if not 0.0 < low_ms <= high_ms:
        raise ValueError(f"tr_range_ms must be (low, high) with 0 < low <= high, got {tr_range_ms}")
    frame = np.arange(n_frames)
    lobe, position = np.divmod(frame, lobe_frames)
    rise_frames = lobe_frames - gap_frames
    peaks = np.asarray(lobe_peaks_deg, dtype=np.float64)[lobe % len(lobe_peaks_deg)]
    shape = np.where(position < rise_frames, np.sin(np.pi * (position + 0.5) / rise_frames), 0.0)
    flips = floor_deg + (peaks - floor_deg) * shape
    noise = _perlin_1d(n_frames, np.random.default_rng(seed))
    span = noise.max() - noise.min()
    unit = (noise - noise.min()) / span if span > 0 else np.zeros(n_frames)
    trs = np.round(low_ms + (high_ms - low_ms) * unit, 2)
    return FispSchedule(tuple(flips.tolist()), tuple(trs.tolist()), te_ms, ti_ms)


def _perlin_1d(n_frames: int, rng: np.random.Generator) -> np.ndarray:
    """Return 1-D Perlin gradient noise summed over three octaves at every frame. Shape `(n_frames,)`."""
    total = np.zeros(n_frames)
    for spacing, amplitude in ((64, 1.0), (32, 0.5), (16, 0.25)):
        x = np.arange(n_frames) / spacing
        cell = np.floor(x).astype(np.int64)
        t = x - cell
        gradients = rng.uniform(-1.0, 1.0, cell[-1] + 2)
        fade = t * t * t * (t * (6.0 * t - 15.0) + 10.0)
        total += amplitude * ((1.0 - fade) * gradients[cell] * t + fade * gradients[cell + 1] * (t - 1.0))
    return total
