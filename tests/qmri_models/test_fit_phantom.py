"""The fit's SD map is honest: over many noise realisations it matches the spread of the fitted T1."""

import numpy as np
import pytest

from qmri_models.fitting.maps import fit_maps
from qmri_models.protocols import IR_TI_MS, MOLLI_TI_MS
from qmri_models.signal_models import MODELS, molli_parameters_from_t1
from qmri_models.simulation.anatomy import NIST_T1_MS, sphere_phantom

N_REALISATIONS = 200
PIXELS_PER_SPHERE = 12
SNR = 100.0


def sphere_pixels(labels: np.ndarray) -> np.ndarray:
    """Return a mask with the first PIXELS_PER_SPHERE pixels (raster order) of every sphere."""
    mask = np.zeros(labels.shape, bool)
    for label in range(2, labels.max() + 1):
        mask.ravel()[np.flatnonzero(labels == label)[:PIXELS_PER_SPHERE]] = True
    return mask


@pytest.mark.parametrize("name", ["inversion_recovery", "molli"])
def test_reported_sd_matches_empirical_sd_per_sphere(name: str) -> None:
    """Mean reported SD within 20% of the empirical SD of T1 over 200 realisations, in every sphere it can measure.

    The SD is a linearisation, honest where the protocol measures T1. Inversion recovery (TIs 50-2500 ms) is held to
    13 of the 14 NIST spheres: at 21 ms the signal has recovered 90% by the first TI, about 1 in 4 fits ends on a
    bound and the reported SD is 26% above the spread (measured). MOLLI (first TI 251 ms) is held to the spheres
    from 485 ms: at 342 ms the null point (about 240 ms) falls before the first TI, the polarity is ambiguous and
    the fitted T1 has heavy tails (spread 25 ms against a reported 8 ms, measured).
    """
    truth = sphere_phantom(64)
    times = np.asarray(IR_TI_MS if name == "inversion_recovery" else MOLLI_TI_MS)
    model = MODELS[name]
    t1 = np.where(truth.labels > 0, truth.t1_ms, 1.0)
    if name == "inversion_recovery":
        signal = model.signal_array(times, pd=truth.pd, b=np.full(t1.shape, 1.96), t1_ms=t1)
    else:
        a, b, t1_star = molli_parameters_from_t1(t1, truth.pd, 0.96)
        signal = model.signal_array(times, a=a, b=b, t1_star_ms=t1_star)
    mask = sphere_pixels(truth.labels)
    sigma = np.abs(signal)[:, truth.labels > 0].mean(axis=1).max() / SNR
    rng = np.random.default_rng(7)
    n_pixels = int(mask.sum())
    clean = signal[:, mask]  # (phases, pixels)
    noisy = clean[:, None, :] + sigma * (
        rng.standard_normal((times.size, N_REALISATIONS, n_pixels))
        + 1j * rng.standard_normal((times.size, N_REALISATIONS, n_pixels))
    )
    maps = fit_maps(
        model,
        noisy.reshape(times.size, N_REALISATIONS, n_pixels),
        times,
        mask=np.ones((N_REALISATIONS, n_pixels), bool),
    )
    fitted, reported = maps.values["T1"], maps.sds["T1"]  # (realisations, pixels)
    labels = truth.labels[mask]
    lowest = 30.0 if name == "inversion_recovery" else 400.0
    checked = 0
    for index, t1_ms in enumerate(NIST_T1_MS):
        if t1_ms < lowest:
            continue
        pixels = labels == index + 2
        empirical = fitted[:, pixels].std(axis=0, ddof=1).mean()
        mean_reported = reported[:, pixels].mean()
        assert abs(mean_reported / empirical - 1.0) < 0.2, (
            f"sphere {t1_ms} ms: SD {mean_reported:.3g} vs {empirical:.3g}"
        )
        assert abs(np.median(fitted[:, pixels]) / t1_ms - 1.0) < 0.03
        checked += 1
    assert checked == (13 if name == "inversion_recovery" else 5)
