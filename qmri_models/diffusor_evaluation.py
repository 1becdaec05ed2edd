"""The qMRI Diffusor against the Levenberg-Marquardt fit on held-out simulated IR slices (``qmri evaluate-diffusor``).

Each slice is simulated in k-space as a scan (8 coils, white noise at the SNR, fully sampled, 7 TIs), its coil
images combined with ESPIRiT maps from its own centre (what the ``t1_ir`` chain's reconstruction sees), then mapped
twice: by the polarity-restored Levenberg-Marquardt fit of ``|PD (1 - B exp(-TI/T1))|`` and by the Diffusor (mean and
SD of N generations). Spheres: the simulator's NIST phantom (the paper's Table 1 values), each sphere's mean and
spread inside its ROI (``structures.rois.sphere_phantom_rois``, 4 mm in from the edge) as the paper's Table 1.
Brain: per tissue class median APE, NRMSE and SSIM (``metrics.score_map_per_tissue``), and the Pearson correlation of
the Diffusor's SD with its absolute error after a Gaussian blur (seed 001's figure, ``calibration.evaluation``).
Seeds start at ``EVALUATION_SEED``, which no training uses.
"""

import time
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from qmri_models.calibration.evaluation import error_correlation
from qmri_models.diffusion.schedule import Sampler
from qmri_models.diffusor.model import DDIM_STEPS, Diffusor, DiffusorMaps
from qmri_models.fitting.maps import MASK_THRESHOLD, MIN_ISLAND_PIXELS, fit_maps, fit_mask
from qmri_models.metrics import TissueScore, score_map_per_tissue
from qmri_models.recon.cartesian import calibration_lines, phase_sensitivities, reconstruct_phases
from qmri_models.signal_models import signal_model
from qmri_models.simulation.scan import ScanSettings, SimulatedSlice, simulate_slice
from qmri_models.structures.geometry import SliceGeometry
from qmri_models.structures.rois import sphere_phantom_rois

EVALUATION_SEED = 600000
"""First seed of the evaluation slices (training uses 0 and its validation offset)."""


@dataclass(frozen=True)
class Generation:
    """How the Diffusor generates: N samples by a sampler, patches ``stride`` apart, on a device."""

    n_samples: int = 10
    sampler: Sampler = "ddim"
    steps: int = DDIM_STEPS
    device: str = "cpu"
    stride: int = 0
    """Pixels between patches (0: half the patch)."""


@dataclass(frozen=True)
class SphereRow:
    """One sphere of one phantom slice: its mean and spread by each method (ms)."""

    snr: float
    true_t1_ms: float
    fit_mean_ms: float
    fit_spread_ms: float
    diffusor_mean_ms: float
    diffusor_spread_ms: float
    diffusor_sd_ms: float
    """Mean of the Diffusor's SD map inside the sphere (its own uncertainty), ms."""


@dataclass(frozen=True)
class BrainScores:
    """Per-tissue scores of both methods on one brain slice, and the Diffusor's SD-error correlation."""

    snr: float
    fit: list[TissueScore]
    diffusor: list[TissueScore]
    sd_error_pearson: float | None
    """Pearson of the blurred T1 SD and the blurred absolute T1 error over the tissue (None when flat)."""
    diffusor_seconds: float
    """Wall time of the Diffusor's generations for the slice."""


def evaluation_slice(phantom: str, snr: float, index: int, *, matrix: int = 160) -> SimulatedSlice:
    """Return held-out IR slice ``index`` of ``phantom`` (``brain`` or ``spheres``) at ``snr``, fully sampled."""
    settings = ScanSettings(contrast="ir", matrix=matrix, n_coils=8, snr=snr, phantom=phantom, noise="white")  # type: ignore[arg-type]
    return simulate_slice(settings, np.random.default_rng([EVALUATION_SEED, round(snr), index]))


def map_slice(
    simulated: SimulatedSlice, diffusor: Diffusor, generation: Generation, *, seed: int = 0
) -> tuple[np.ndarray, DiffusorMaps, np.ndarray, float]:
    """Return the fit's T1 (ms), the Diffusor's maps, the mask both are scored in, and the Diffusor's seconds.

    The images are the coil-combined reconstruction of the slice's k-space (ESPIRiT maps from its centre).
    """
    sens = phase_sensitivities(simulated.kdata, calibration_lines(simulated.sampled))
    images = reconstruct_phases(simulated.kdata, simulated.sampled, sens, method="zero_filled")
    times = np.asarray(diffusor.ti_ms, dtype=np.float64)
    mask = fit_mask(images, MASK_THRESHOLD, MIN_ISLAND_PIXELS)
    fitted = fit_maps(signal_model("inversion_recovery"), images, times, mask=mask, device=generation.device)
    start = time.perf_counter()
    generated = diffusor.generate_maps(
        np.abs(images),
        n_samples=generation.n_samples,
        sampler=generation.sampler,
        steps=generation.steps,
        seed=seed,
        stride=generation.stride,
        device=generation.device,
    )
    return fitted.values["T1"], generated, mask, time.perf_counter() - start


def sphere_rows(diffusor: Diffusor, snr: float, generation: Generation, *, slices: int, matrix: int) -> list[SphereRow]:
    """Return every sphere of ``slices`` phantom slices at ``snr``, both methods side by side."""
    rows = []
    for index in range(slices):
        simulated = evaluation_slice("spheres", snr, index, matrix=matrix)
        fit_t1, generated, mask, _ = map_slice(simulated, diffusor, generation, seed=index)
        geometry = SliceGeometry(fov_mm=(220.0, 220.0), matrix=(matrix, matrix), slice_thickness_mm=8.0)
        for roi in sphere_phantom_rois(simulated.truth, geometry):
            pixels = roi.mask & mask
            if not pixels.any():
                continue
            t1 = generated.value("T1")[pixels]
            rows.append(
                SphereRow(
                    snr=snr,
                    true_t1_ms=float(roi.nominal_ms["T1"]),
                    fit_mean_ms=float(fit_t1[pixels].mean()),
                    fit_spread_ms=float(fit_t1[pixels].std()),
                    diffusor_mean_ms=float(t1.mean()),
                    diffusor_spread_ms=float(t1.std()),
                    diffusor_sd_ms=float(generated.spread("T1")[pixels].mean()),
                )
            )
    return rows


def brain_scores(
    diffusor: Diffusor, snr: float, generation: Generation, *, slices: int, matrix: int
) -> list[BrainScores]:
    """Return both methods' per-tissue scores and the SD-error correlation on ``slices`` brain slices at ``snr``."""
    scores = []
    for index in range(slices):
        simulated = evaluation_slice("brain", snr, index, matrix=matrix)
        fit_t1, generated, mask, seconds = map_slice(simulated, diffusor, generation, seed=index)
        truth, labels = simulated.truth.t1_ms, simulated.truth.labels
        names = list(simulated.truth.label_names)
        scored = np.where(mask, labels, 0)
        t1 = generated.value("T1")
        tissue = scored > 0
        correlation = error_correlation(generated.spread("T1"), np.abs(t1 - truth), tissue)
        scores.append(
            BrainScores(
                snr=snr,
                fit=score_map_per_tissue(np.where(mask, fit_t1, 0), truth, scored, names),
                diffusor=score_map_per_tissue(np.where(mask, t1, 0), truth, scored, names),
                sd_error_pearson=correlation.pearson,
                diffusor_seconds=seconds,
            )
        )
    return scores


def tissue_table(scores: Sequence[BrainScores], tissues: Sequence[str]) -> list[tuple[str, ...]]:
    """Return one row per SNR and tissue: median APE / NRMSE / SSIM of the fit and of the Diffusor (slice means)."""
    rows = []
    for snr in sorted({s.snr for s in scores}, reverse=True):
        at = [s for s in scores if s.snr == snr]
        for tissue in tissues:
            cells = []
            for method in ("fit", "diffusor"):
                found = [t for s in at for t in getattr(s, method) if t.tissue == tissue]
                if not found:
                    cells.append("-")
                    continue
                ape, err, sim = (
                    float(np.mean([getattr(t, k) for t in found])) for k in ("median_ape_percent", "nrmse", "ssim")
                )
                cells.append(f"{ape:.1f}% / {err:.3f} / {sim:.3f}")
            rows.append((f"{snr:g}", tissue, *cells))
    return rows
