"""The PUQ fit keeps every MC sample's primary map, and the map SD it reports is their spread."""

import numpy as np
import pytest
import torch

from qmri_models.fitting.guided import fit_guided_maps
from qmri_models.networks.fit_mlp import FitMlp
from qmri_models.protocols import MOLLI_TI_MS
from qmri_models.signal_models import signal_model

TIMES = np.asarray(MOLLI_TI_MS)


def molli_samples(rng: np.random.Generator, n_samples: int = 6) -> np.ndarray:
    """Return MC-like samples `(n_samples, 8, 6, 5)` of MOLLI magnitudes: T1 700-1600 ms, 3 % multiplicative noise."""
    t1 = rng.uniform(700, 1600, (6, 5))
    clean = np.abs(1.0 - 2.0 * np.exp(-TIMES[:, None, None] / t1[None]))
    return clean[None] * (1 + 0.03 * rng.standard_normal((n_samples, *clean.shape)))


@pytest.mark.parametrize("fit", ["model_based", "learned"])
def test_samples_spread_is_the_reported_sd(fit: str) -> None:
    samples = molli_samples(np.random.default_rng(3))
    mean, sd = samples.mean(axis=0), samples.std(axis=0)
    torch.manual_seed(0)
    mlp = FitMlp(n_phases=8, guided=True) if fit == "learned" else None

    maps = fit_guided_maps(
        signal_model("molli"), mean, sd, samples, TIMES, fit=fit, mlp=mlp, mask_threshold=0.0, with_disagreement=False
    )

    assert set(maps.samples) == {"T1"}
    t1_samples = maps.samples["T1"]
    assert t1_samples.shape == (6, 6, 5)
    assert t1_samples.dtype == np.float32
    kept = maps.kept
    assert kept.sum() > 20
    np.testing.assert_allclose(t1_samples.std(axis=0)[kept], maps.sds["T1"][kept], rtol=1e-5, atol=1e-4)
    assert np.all((t1_samples >= 0) & (t1_samples <= maps.maxima["T1"]))


def test_model_based_samples_scatter_around_the_map_of_the_mean() -> None:
    samples = molli_samples(np.random.default_rng(4), n_samples=8)
    mean, sd = samples.mean(axis=0), samples.std(axis=0)

    maps = fit_guided_maps(signal_model("molli"), mean, sd, samples, TIMES, mask_threshold=0.0)

    kept = maps.kept
    spread = maps.samples["T1"].mean(axis=0)[kept] - maps.values["T1"][kept]
    assert np.median(np.abs(spread) / maps.values["T1"][kept]) < 0.05
