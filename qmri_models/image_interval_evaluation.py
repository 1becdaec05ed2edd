"""Conformal intervals on the PUQ phase images (seed 001 on our reconstruction), quantile head against baselines.

The image quantile head is compared with the conformalised error head and MC SD. New simulated slices (seeds
``IMAGE_INTERVAL_SEED`` and up, three disjoint sets: training, calibration, test) run through the shipped, frozen PUQ
reconstruction with its error head (MC dropout, ``mc_samples`` per slice). On the magnitude of every phase image, three
intervals ``[|mean| - lambda lower, |mean| + lambda upper]`` are compared:

- ``quantile_head``: the offsets of an ``ImageQuantileHead`` trained here on the training slices by the pinball loss
  at alpha/2 and 1 - alpha/2 (``qmri_models.calibration.pinball``), tissue pixels only;
- ``error_head``: the error head's predicted RMS error on both sides (the uncertainty the PUQ chains send);
- ``mc_sd``: the MC spread on both sides (the paper's Eq. 2).

Each scale lambda is calibrated on the calibration slices (one loss per slice: the fraction of its tissue pixels, all
phases, whose true magnitude lies outside; ``calibrate_interval_scale`` with the default bound), pooled over the
accelerations; then the test slices give the coverage (overall and per acceleration), the full width relative to the
magnitude (the sum over tissue pixels of every phase of the width over that of ``|mean|``: a ratio of means, since
MOLLI's phases near the inversion null have magnitudes near 0), and seed 001's Pearson between width and absolute error
after a Gaussian blur (per slice, on the phase-averaged width and error), mean and SD over slices.
"""

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from qmri_models.calibration.evaluation import error_correlation
from qmri_models.calibration.pinball import pinball_loss
from qmri_models.calibration.risk_control import calibrate_interval_scale
from qmri_models.networks.image_quantile_head import ImageQuantileHead
from qmri_models.networks.unrolled import sens_reduce
from qmri_models.pretrained import MapName, load_recon_network
from qmri_models.training.recon_data import mc_estimates, simulate_recon_examples

IMAGE_INTERVAL_SEED = 800_000
"""Base seed of the study's slices (training, calibration +1, test +2), apart from every other seed in use."""
METHODS = ("quantile_head", "error_head", "mc_sd")
"""The intervals compared, in table order."""
LAMBDAS = np.round(np.arange(0.0, 30.0 + 1e-9, 0.01), 12)
"""Candidate scales (the SD-type offsets need large ones at 10x)."""


@dataclass(frozen=True)
class ImageIntervalStudy:
    """What the study simulates and trains."""

    map_name: MapName = "t1"
    """The shipped PUQ reconstruction: ``t1`` (MOLLI) or ``t2`` (T2-prep)."""
    accelerations: tuple[int, ...] = (6, 8, 10)
    """Accelerations drawn from, uniformly, per slice."""
    matrix: int = 160
    """Image size (the networks' training size)."""
    n_train: int = 24
    """Slices that train the quantile head."""
    n_calibration: int = 60
    """Slices that calibrate every method's scale (WSR needs about 30 or more to certify alpha 0.1)."""
    n_test: int = 24
    """Slices that score them."""
    mc_samples: int = 10
    """MC samples per slice."""
    alpha: float = 0.1
    """Risk to control: the expected fraction of tissue pixels outside."""
    delta: float = 0.1
    """Tolerated probability of failing to control it."""
    hidden: int = 32
    """Channels of the quantile head."""
    steps: int = 1500
    """Training steps of the quantile head."""
    batch_size: int = 4
    learning_rate: float = 1e-3
    seed: int = IMAGE_INTERVAL_SEED

    def __post_init__(self) -> None:
        for name in ("matrix", "n_train", "n_calibration", "n_test", "mc_samples", "hidden", "steps", "batch_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")
        if self.mc_samples < 2:
            raise ValueError(f"mc_samples must be at least 2, got {self.mc_samples}")
        for name in ("alpha", "delta"):
            if not 0.0 < getattr(self, name) < 1.0:
                raise ValueError(f"{name} must be in (0, 1), got {getattr(self, name)}")


@dataclass(frozen=True)
class StageOne:
    """The frozen network's output on slices, beside their truth, in the network's scaled units."""

    mean: torch.Tensor
    """MC mean. Shape `(n, phases, y, x)` complex64."""
    zero_filled: torch.Tensor
    """Zero-filled coil-combined images. Same shape, complex64."""
    mc_sd: torch.Tensor
    """MC SD. Shape `(n, phases, y, x)` float32."""
    error_sd: torch.Tensor
    """The error head's predicted RMS error. Same shape, float32."""
    target: torch.Tensor
    """Noise-free truth. Shape `(n, phases, y, x)` complex64."""
    tissue: torch.Tensor
    """Object pixels. Shape `(n, y, x)` bool."""
    acceleration: torch.Tensor
    """Each slice's acceleration. Shape `(n,)` int64."""


@dataclass(frozen=True)
class MethodResult:
    """How one interval did on the test slices."""

    method: str
    scale: float
    """Calibrated lambda."""
    calibration_risk: float
    """Mean calibration loss at lambda."""
    coverage: float
    """Fraction of test tissue pixels (all phases) whose true magnitude lies inside."""
    coverage_by_acceleration: dict[int, float]
    width_percent: float
    """Full width over ``|mean|``, both summed over the tissue pixels of every phase, percent."""
    pearson_mean: float
    """Seed 001's blurred Pearson of width and |error|, mean over test slices."""
    pearson_sd: float


def stage_one(study: ImageIntervalStudy, n: int, seed: int, device: torch.device) -> StageOne:
    """Return the shipped network's MC output (with its error head) on ``n`` new slices of ``seed``."""
    network = load_recon_network(study.map_name).to(device)
    if network.error_head is None:
        raise ValueError(f"the shipped {study.map_name} network has no error head")
    examples = simulate_recon_examples(
        study.map_name, n, matrix=study.matrix, n_coils=8, accelerations=study.accelerations, snr=50.0, seed=seed
    )
    estimates = list(mc_estimates(network, examples, n_samples=study.mc_samples, device=device))
    return StageOne(
        mean=torch.stack([e.mean.cpu() for e in estimates]),
        zero_filled=sens_reduce(examples.kdata, examples.sens),
        mc_sd=torch.stack([e.sd.cpu() for e in estimates]),
        error_sd=torch.stack([e.uncertainty.cpu() for e in estimates]),
        target=examples.target,
        tissue=examples.tissue,
        acceleration=examples.acceleration,
    )


def train_image_quantile_head(
    study: ImageIntervalStudy, data: StageOne, *, progress: Callable[[int, float], None] | None = None
) -> ImageQuantileHead:
    """Return a head trained on ``data`` by the pinball loss of the true magnitude, tissue pixels of every phase."""
    torch.manual_seed(study.seed)
    head = ImageQuantileHead(n_phases=data.mean.shape[1], hidden=study.hidden)
    optimiser = torch.optim.Adam(head.parameters(), lr=study.learning_rate)
    generator = torch.Generator().manual_seed(study.seed)
    magnitude, truth = data.mean.abs(), data.target.abs()
    for step in range(1, study.steps + 1):
        batch = torch.randint(len(data.mean), (study.batch_size,), generator=generator)
        lower, upper = head(data.mean[batch], data.zero_filled[batch], data.mc_sd[batch])
        keep = data.tissue[batch][:, None].expand_as(lower)
        value, target = magnitude[batch][keep], truth[batch][keep]
        loss = pinball_loss(value - lower[keep], target, study.alpha / 2) + pinball_loss(
            value + upper[keep], target, 1 - study.alpha / 2
        )
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
        if progress is not None and (step % 100 == 0 or step == study.steps):
            progress(step, float(loss.detach()))
    return head.eval()


def method_offsets(method: str, head: ImageQuantileHead, data: StageOne) -> tuple[np.ndarray, np.ndarray]:
    """Return a method's lower and upper offsets of the magnitude. Each `(n, phases, y, x)` float64."""
    if method == "quantile_head":
        with torch.no_grad():
            parts = [
                head(data.mean[i : i + 4], data.zero_filled[i : i + 4], data.mc_sd[i : i + 4])
                for i in range(0, len(data.mean), 4)
            ]
        return (
            torch.cat([p[0] for p in parts]).double().numpy(),
            torch.cat([p[1] for p in parts]).double().numpy(),
        )
    uncertainty = {"error_head": data.error_sd, "mc_sd": data.mc_sd}[method].double().numpy()
    return uncertainty, uncertainty


def run_study(
    study: ImageIntervalStudy,
    *,
    device: torch.device,
    on_stage: Callable[[str], None] | None = None,
    on_step: Callable[[int, float], None] | None = None,
) -> list[MethodResult]:
    """Return every method's calibrated result on the test slices (module docstring)."""

    def say(stage: str) -> None:
        if on_stage is not None:
            on_stage(stage)

    say(f"stage 1 on {study.n_train} training slices")
    train = stage_one(study, study.n_train, study.seed, device)
    say(f"training the quantile head ({study.steps} steps)")
    head = train_image_quantile_head(study, train, progress=on_step)
    say(f"stage 1 on {study.n_calibration} calibration slices")
    calibration = stage_one(study, study.n_calibration, study.seed + 1, device)
    say(f"stage 1 on {study.n_test} test slices")
    test = stage_one(study, study.n_test, study.seed + 2, device)
    return [score(method, head, calibration, test, study) for method in METHODS]


def score(
    method: str, head: ImageQuantileHead, calibration: StageOne, test: StageOne, study: ImageIntervalStudy
) -> MethodResult:
    """Return one method's scale calibrated on ``calibration`` and its figures on ``test``."""
    mask = calibration.tissue[:, None].numpy()
    lower, upper = method_offsets(method, head, calibration)
    calibrated = calibrate_interval_scale(
        calibration.mean.abs().double().numpy(),
        calibration.target.abs().double().numpy(),
        lower,
        upper,
        LAMBDAS,
        alpha=study.alpha,
        delta=study.delta,
        mask=np.broadcast_to(mask, lower.shape),
    )
    scale = calibrated.scale
    lower, upper = method_offsets(method, head, test)
    value, truth = test.mean.abs().double().numpy(), test.target.abs().double().numpy()
    inside = (value - scale * lower <= truth) & (truth <= value + scale * upper)
    tissue = np.broadcast_to(test.tissue[:, None].numpy(), inside.shape)
    width = scale * (lower + upper)
    error = np.abs(value - truth)
    correlations = [
        error_correlation(width[i].mean(axis=0), error[i].mean(axis=0), test.tissue[i].numpy()).pearson
        for i in range(len(value))
    ]
    defined = np.array([c for c in correlations if c is not None])
    accelerations = test.acceleration.numpy()
    return MethodResult(
        method=method,
        scale=scale,
        calibration_risk=calibrated.risk,
        coverage=float(inside[tissue].mean()),
        coverage_by_acceleration={
            int(a): float(inside[accelerations == a][tissue[accelerations == a]].mean())
            for a in sorted(set(accelerations.tolist()))
        },
        width_percent=float(100 * width[tissue].sum() / value[tissue].sum()),
        pearson_mean=float(defined.mean()) if defined.size else float("nan"),
        pearson_sd=float(defined.std()) if defined.size else float("nan"),
    )


def results_table(study: ImageIntervalStudy, results: list[MethodResult]) -> str:
    """Return the comparison as Markdown."""
    accelerations = sorted({a for r in results for a in r.coverage_by_acceleration})
    lines = [
        f"PUQ {study.map_name} phase images: intervals of the magnitude at alpha {study.alpha:g}, delta "
        f"{study.delta:g} ({study.n_train} training, {study.n_calibration} calibration, {study.n_test} test slices, "
        f"{study.matrix}^2, accelerations {', '.join(map(str, study.accelerations))}, {study.mc_samples} MC samples)",
        "",
        "| interval | λ | calibration risk | test coverage | "
        + " | ".join(f"coverage R={a}" for a in accelerations)
        + " | width / value % | Pearson after blur |",
        "|---|---|---|---|" + "---|" * len(accelerations) + "---|---|",
    ]
    for r in results:
        by_r = " | ".join(f"{r.coverage_by_acceleration.get(a, float('nan')):.3f}" for a in accelerations)
        lines.append(
            f"| {r.method} | {r.scale:.2f} | {r.calibration_risk:.4f} | {r.coverage:.3f} | {by_r} | "
            f"{r.width_percent:.1f} | {r.pearson_mean:.2f}±{r.pearson_sd:.2f} |"
        )
    return "\n".join(lines)
