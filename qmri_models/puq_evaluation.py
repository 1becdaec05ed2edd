"""Evaluation of PUQ against its baselines on held-out simulated slices (the paper's Tables 1 and 2).

For every acceleration, ``n_slices`` new slices (seeds apart from every training seed) are reconstructed five ways
and fitted, and the map is scored against the truth in the tissue:

- ``CG-SENSE + fit``: sigpy CG-SENSE (10 iterations, the ``t1_molli`` chain's) and the Levenberg-Marquardt fit;
- ``Unrolled + fit``: the PUQ network with dropout off, one pass, the same fit;
- ``PUQ w/o G (model-based)`` / ``PUQ w/o G (learned)``: the MC mean, equal weights / the MLP trained without its
  uncertainty inputs;
- ``PUQ model-based`` / ``PUQ learned``: the MC mean guided by the per-phase SD (weights 1/SD^2 / the guided MLP).

It also reports how far the per-phase uncertainty (``McEstimate.uncertainty``: the error head's SD when the network
has one) tells where the reconstruction is wrong: the Pearson correlation, over the tissue pixels of every phase,
between it and the true error ``|mean - truth|``, both blurred by a Gaussian of sigma 2 pixels (as the
conformal-uncertainty paper does), the same for the MC-dropout SD alone (the paper's uncertainty), and the mean
uncertainty relative to the mean signal.
The coil-combined truth is the noise-free image combined with the same ESPIRiT maps as the reconstruction (the
training target), so the error is the reconstruction's and not the maps' phase convention.
"""

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from scipy.ndimage import gaussian_filter

from qmri_models.fitting.guided import learned_map, phase_weights
from qmri_models.fitting.maps import fit_maps, signal_mask
from qmri_models.metrics import masked_ssim_map, normalised_cross_correlation, nrmse
from qmri_models.networks.fit_mlp import FitMlp
from qmri_models.networks.puq_recon import deterministic_reconstruct, puq_reconstruct
from qmri_models.networks.unrolled import UnrolledRecon
from qmri_models.pretrained import CONTRAST_OF_MAP, MapName
from qmri_models.recon.cartesian import calibration_lines, phase_sensitivities, reconstruct_phases
from qmri_models.signal_models import SignalModel, signal_model
from qmri_models.simulation.scan import ScanSettings, SimulatedSlice, simulate_slice

METHODS = (
    "CG-SENSE + fit",
    "Unrolled + fit",
    "PUQ w/o G (model-based)",
    "PUQ w/o G (learned)",
    "PUQ model-based",
    "PUQ learned",
)
"""The rows of the table, in order."""
HELD_OUT_SEED = 20_251_121
"""Base seed of the evaluation slices; training uses seeds 0 (reconstruction) and 7 (fit) with small offsets."""
ERROR_BLUR_SIGMA = 2.0
"""Gaussian blur (pixels) of the SD and error images before their correlation."""


@dataclass
class SliceScores:
    """Scores of one slice."""

    nrmse: dict[str, float]
    ssim: dict[str, float]
    correlation: float
    """Pearson correlation of the blurred per-phase uncertainty and true error over tissue pixels of all phases."""
    mc_sd_correlation: float
    """The same for the MC-dropout SD alone."""
    relative_sd: float
    """Mean per-phase uncertainty over the mean magnitude, in the tissue."""


@dataclass
class AccelerationScores:
    """Scores of every slice at one acceleration."""

    acceleration: int
    slices: list[SliceScores] = field(default_factory=list)

    def mean_nrmse(self, method: str) -> float:
        """Return the mean map NRMSE of a method over the slices."""
        return float(np.mean([s.nrmse[method] for s in self.slices]))

    def mean_ssim(self, method: str) -> float:
        """Return the mean map SSIM of a method over the slices."""
        return float(np.mean([s.ssim[method] for s in self.slices]))

    def mean_correlation(self, *, mc_sd: bool = False) -> float:
        """Return the mean uncertainty-error correlation over the slices (of the MC-dropout SD alone if asked)."""
        return float(np.mean([s.mc_sd_correlation if mc_sd else s.correlation for s in self.slices]))

    def mean_relative_sd(self) -> float:
        """Return the mean relative SD over the slices."""
        return float(np.mean([s.relative_sd for s in self.slices]))


@dataclass(frozen=True)
class PuqNetworks:
    """The trained networks of one map."""

    recon: UnrolledRecon
    mlp_guided: FitMlp
    mlp_unguided: FitMlp


def combined_truth(simulated: SimulatedSlice, sens: np.ndarray) -> np.ndarray:
    """Return the slice's noise-free coil images combined with ``sens``: what a reconstruction with these maps aims at.

    Parameters
    ----------
    simulated : The simulated slice (its noise-free images and true coils).
    sens : The coil maps of the reconstruction (ESPIRiT). Shape `(coils, y, x)` complex.

    Returns
    -------
    Images. Shape `(phases, y, x)` complex.
    """
    return np.einsum("cyx,cyx,pyx->pyx", sens.conj(), simulated.sens, simulated.images)


def held_out_slice(map_name: MapName, acceleration: int, index: int, *, matrix: int = 160) -> SimulatedSlice:
    """Return held-out evaluation slice ``index`` at ``acceleration`` (8 coils, SNR 50, as the training data)."""
    settings = ScanSettings(
        contrast=CONTRAST_OF_MAP[map_name], matrix=matrix, n_coils=8, acceleration=acceleration, snr=50.0, noise="white"
    )
    return simulate_slice(settings, np.random.default_rng([HELD_OUT_SEED, acceleration, index]))


def model_and_times(map_name: MapName) -> tuple[SignalModel, np.ndarray]:
    """Return the signal model of a map's contrast and the simulator's preparation times in ms `(phases,)`."""
    contrast = CONTRAST_OF_MAP[map_name]
    return signal_model(contrast), np.asarray(ScanSettings(contrast=contrast).prep_times, dtype=np.float64)


def evaluate_slice(
    map_name: MapName,
    simulated: SimulatedSlice,
    networks: PuqNetworks,
    *,
    mc_samples: int = 100,
    device: str | torch.device = "cpu",
) -> SliceScores:
    """Return the scores of every method on one simulated slice.

    Parameters
    ----------
    map_name : ``t1`` (MOLLI) or ``t2`` (T2-prep).
    simulated : The slice, with its truth.
    networks : Trained reconstruction network and MLPs.
    mc_samples : MC samples T.
    device : Where the networks and fits run.
    """
    model, times = model_and_times(map_name)
    kdata, sampled = simulated.kdata, simulated.sampled
    sens = phase_sensitivities(kdata, calibration_lines(sampled))
    cg = reconstruct_phases(kdata, sampled, sens, method="cg_sense", max_iter=10)
    unrolled = deterministic_reconstruct(networks.recon, kdata, sampled, sens, device=device).cpu().numpy()
    estimate = puq_reconstruct(networks.recon, kdata, sampled, sens, n_samples=mc_samples, device=device)
    mean, sd = estimate.mean.cpu().numpy(), estimate.uncertainty.cpu().numpy()
    mask = signal_mask(mean, 0.08)

    def fitted(images: np.ndarray, weights: np.ndarray | None = None) -> np.ndarray:
        maps = fit_maps(model, images, times, mask=mask, weights=weights, device=device)
        return maps.values[model.primary_map]

    maps = {
        "CG-SENSE + fit": fitted(cg),
        "Unrolled + fit": fitted(unrolled),
        "PUQ w/o G (model-based)": fitted(mean),
        "PUQ w/o G (learned)": learned_map(networks.mlp_unguided, mean, sd, mask, device=device),
        "PUQ model-based": fitted(mean, phase_weights(mean, sd)),
        "PUQ learned": learned_map(networks.mlp_guided, mean, sd, mask, device=device),
    }
    truth = simulated.truth.t1_ms if map_name == "t1" else simulated.truth.t2_ms
    tissue = simulated.truth.labels > 0
    error = np.abs(mean - combined_truth(simulated, sens))
    return SliceScores(
        nrmse={name: nrmse(values, truth, tissue) for name, values in maps.items()},
        ssim={name: float(masked_ssim_map(values, truth, tissue)[tissue].mean()) for name, values in maps.items()},
        correlation=uncertainty_error_correlation(sd, error, tissue),
        mc_sd_correlation=uncertainty_error_correlation(estimate.sd.cpu().numpy(), error, tissue),
        relative_sd=float(sd[:, tissue].mean() / np.abs(mean)[:, tissue].mean()),
    )


def uncertainty_error_correlation(sd: np.ndarray, error: np.ndarray, mask: np.ndarray) -> float:
    """Return the Pearson correlation of the blurred per-phase SD and error over the masked pixels of all phases.

    Parameters
    ----------
    sd : Per-phase uncertainty. Shape `(phases, y, x)`.
    error : True per-phase error magnitude. Shape `(phases, y, x)`.
    mask : Pixels that count. Shape `(y, x)` bool.
    """
    blurred_sd = gaussian_filter(sd.astype(np.float64), sigma=(0, ERROR_BLUR_SIGMA, ERROR_BLUR_SIGMA))
    blurred_error = gaussian_filter(error.astype(np.float64), sigma=(0, ERROR_BLUR_SIGMA, ERROR_BLUR_SIGMA))
    return normalised_cross_correlation(blurred_sd[:, mask], blurred_error[:, mask])


def evaluate_puq(
    map_name: MapName,
    accelerations: Sequence[int],
    networks: PuqNetworks,
    *,
    n_slices: int = 4,
    matrix: int = 160,
    mc_samples: int = 100,
    device: str | torch.device = "cpu",
    on_slice: Callable[[int, int], None] | None = None,
) -> list[AccelerationScores]:
    """Return the scores of every method at every acceleration over ``n_slices`` held-out slices each.

    ``on_slice`` is called with the acceleration and the number of its slices done (progress).
    """
    results = []
    for acceleration in accelerations:
        scores = AccelerationScores(acceleration)
        for index in range(n_slices):
            simulated = held_out_slice(map_name, acceleration, index, matrix=matrix)
            scores.slices.append(evaluate_slice(map_name, simulated, networks, mc_samples=mc_samples, device=device))
            if on_slice is not None:
                on_slice(acceleration, index + 1)
        results.append(scores)
    return results


def format_table(map_name: MapName, results: list[AccelerationScores]) -> str:
    """Return the Markdown table: map NRMSE and SSIM per method and acceleration, then the uncertainty rows."""
    header = "| Method | " + " | ".join(f"{r.acceleration}x NRMSE | {r.acceleration}x SSIM" for r in results) + " |"
    rule = "|---|" + "---|---|" * len(results)
    rows = [header, rule]
    for method in METHODS:
        cells = " | ".join(f"{r.mean_nrmse(method):.4f} | {r.mean_ssim(method):.4f}" for r in results)
        rows.append(f"| {map_name.upper()}: {method} | {cells} |")
    correlation = " | ".join(f"{r.mean_correlation():.3f} | " for r in results)
    rows.append(f"| Pearson r (per-phase uncertainty vs error, blurred) | {correlation}")
    mc_correlation = " | ".join(f"{r.mean_correlation(mc_sd=True):.3f} | " for r in results)
    rows.append(f"| Pearson r of the MC-dropout SD alone (the paper's) | {mc_correlation}")
    relative = " | ".join(f"{r.mean_relative_sd():.4f} | " for r in results)
    rows.append(f"| Mean uncertainty / mean signal | {relative}")
    return "\n".join(rows)
