"""What every training run trains: its configuration, each default written here once.

The trainers take these, ``qmri train`` reads its option defaults from them and shipping compares a run's
configuration with them. The module holds plain dataclasses only (no torch, no simulator), so the command line can
build its options without loading either.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal, get_args

from qmri_models.diffusion.prediction import PREDICTIONS, Prediction

if TYPE_CHECKING:
    from qmri_models.pretrained import MapName


@dataclass(frozen=True)
class SliceRecipe:
    """The simulated slices a training draws (``qmri_models.training.recon_data.simulate_recon_examples``)."""

    map_name: MapName = "t1"
    """``t1`` (MOLLI slices) or ``t2`` (T2-prep slices)."""
    matrix: int = 160
    """Image size in pixels per side."""
    n_coils: int = 8
    accelerations: tuple[int, ...] = (6, 8, 10)
    """Accelerations drawn from, uniformly (the PUQ paper's, each with its ACS fraction)."""
    snr: float = 50.0
    """Mean tissue signal of the brightest phase over the noise SD."""
    phantom_fraction: float = 0.0
    """Fraction of the slices (of each split) that are random sphere phantoms (QA objects, values drawn as
    ``anatomy.random_sphere_phantom`` says) instead of brain slices, rounded to whole slices."""

    def __post_init__(self) -> None:
        if not 0.0 <= self.phantom_fraction <= 1.0:
            raise ValueError(f"phantom_fraction must lie in [0, 1], got {self.phantom_fraction}")


@dataclass(frozen=True)
class ReconTrainingConfig(SliceRecipe):
    """What to train: data recipe, network size and optimisation. Sizes default to the paper's network."""

    n_train: int = 200
    n_val: int = 20
    n_iterations: int = 5
    hidden: int = 64
    dropout: float = 0.3
    steps: int = 2000
    batch_size: int = 4
    learning_rate: float = 1e-3
    grad_clip: float = 1.0
    """Largest gradient norm (the paper clips at 0.01 with a learning rate of 0.01)."""
    validate_every: int = 100
    seed: int = 0

    def __post_init__(self) -> None:
        super().__post_init__()
        for name in ("n_train", "n_val", "steps", "batch_size", "validate_every"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")
        if self.learning_rate <= 0 or self.grad_clip <= 0:
            raise ValueError("learning_rate and grad_clip must be positive")

    def data_recipe(self) -> dict[str, Any]:
        """Return the fields that decide the simulated examples (the cache key)."""
        names = ("map_name", "n_train", "n_val", "matrix", "n_coils", "accelerations", "snr", "phantom_fraction")
        return {name: getattr(self, name) for name in (*names, "seed")}


@dataclass(frozen=True)
class StageOneData(SliceRecipe):
    """New simulated slices run through a trained stage-1 network, to train what follows it (learned fit, error head).

    The trainers' configurations extend it; ``recon_data.stage_one_recipe`` is the key of their cached stage-1 output.
    """

    recon_weights: str = "t1"
    """The stage-1 network: ``t1``, ``t2`` (shipped) or a ``weights.pt`` path."""
    n_train: int = 24
    n_val: int = 6
    mc_samples: int = 20
    """MC samples per slice."""
    seed: int = 7
    """Seed of the slices (keep it apart from the reconstruction training's, 0, so they are new slices)."""

    def __post_init__(self) -> None:
        super().__post_init__()
        for name in ("n_train", "n_val"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")
        if self.mc_samples < 2:
            raise ValueError(f"mc_samples must be at least 2, got {self.mc_samples}")


FitLoss = Literal["mse", "relative"]
"""The learned fit's training loss: ``mse`` the paper's mean squared error of the map over its scale
(``fit_mlp.SCALE_MS``), ``relative`` the mean squared relative error ``((map - truth) / truth)^2``."""


@dataclass(frozen=True)
class FitTrainingConfig(StageOneData):
    """What to train on (``StageOneData``) and how: the paper's MLP (5 layers, 64 units, Adam 1e-3, batch 1024)."""

    hidden: int = 64
    epochs: int = 30
    batch_size: int = 1024
    learning_rate: float = 1e-3
    loss: FitLoss = "mse"
    """Training loss: mse (the paper's; long relaxation times the protocol cannot measure dominate it) or relative
    (squared relative error: right on phantom spheres, but it reads CSF's T2 low; README, PUQ T2)."""

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.loss not in get_args(FitLoss):
            raise ValueError(f"loss must be one of {', '.join(get_args(FitLoss))}, got {self.loss!r}")
        for name in ("epochs", "batch_size", "hidden"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")


@dataclass(frozen=True)
class ErrorHeadTrainingConfig(StageOneData):
    """What to train on (``StageOneData``, the frozen network's output on new slices) and how."""

    mc_samples: int = 10
    """MC samples per slice for the mean and SD the head sees (the stream uses more; the head is insensitive)."""
    seed: int = 11
    """Seed of the slices (apart from the reconstruction's 0 and the learned fit's 7)."""
    hidden: int = 32
    steps: int = 3000
    batch_size: int = 4
    learning_rate: float = 1e-3
    grad_clip: float = 1.0
    validate_every: int = 500

    def __post_init__(self) -> None:
        super().__post_init__()
        for name in ("hidden", "steps", "batch_size", "validate_every"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")
        if self.learning_rate <= 0 or self.grad_clip <= 0:
            raise ValueError("learning_rate and grad_clip must be positive")


@dataclass(frozen=True)
class DiffusorTrainingConfig:
    """What the qMRI Diffusor trains on (simulated IR slices in image space) and how.

    The network defaults are reduced from the paper's (levels of 128, 256, 256 channels, 100 epochs of 3976
    slices) to what trains on a 2-core CPU in hours; ``qmri train diffusor`` takes the paper's sizes on a GPU.
    """

    n_train: int = 400
    n_val: int = 8
    matrix: int = 160
    """Image size of the simulated slices in pixels per side (220 mm field of view, as the scans)."""
    crop: int = 64
    """Side of the random square each training batch is cut to, in pixels (a multiple of the U-Net's
    downsampling; the matrix or more: whole slices). The Diffusor then generates patch by patch at this size."""
    snr_range: tuple[float, float] = (20.0, 120.0)
    """Range the SNR of each slice is drawn from (log-uniformly): signal of the brightest TI over the noise SD."""
    phantom_fraction: float = 0.33
    """Fraction of the slices that are random sphere phantoms instead of brain slices, rounded."""
    efficiency_range: tuple[float, float] = (0.80, 1.0)
    """Range the inversion efficiency of each slice is drawn from (B = 1 + efficiency)."""
    channels: tuple[int, ...] = (32, 64, 64)
    """Channels of the U-Net's levels (the paper: 128, 256, 256); self-attention at the lowest level only."""
    res_blocks: int = 1
    """Residual blocks per level."""
    norm_groups: int = 32
    """Groups of the U-Net's group normalisations (each level's channels a multiple of it)."""
    head_channels: int = 32
    """Channels per attention head."""
    train_steps: int = 1000
    """Diffusion steps T of the noise schedule."""
    prediction: Prediction = "v_prediction"
    """What the U-Net predicts: v_prediction (the velocity), epsilon (the noise, as the paper) or sample. With the
    noise, 1000 to 3000 steps on this CPU read the NIST spheres compressed towards 700 ms under 10-step DDIM (1884
    ms as 986, 241 ms as 283 at 3000 steps) and did not move; Lin et al. 2024 pair the velocity with the trailing
    DDIM steps the samplers use."""
    steps: int = 10000
    """Optimiser steps."""
    batch_size: int = 8
    learning_rate: float = 2e-4
    grad_clip: float = 1.0
    validate_every: int = 1000
    seed: int = 0

    def __post_init__(self) -> None:
        for name in ("n_train", "n_val", "steps", "batch_size", "validate_every", "res_blocks", "train_steps", "crop"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")
        if not 0 < self.snr_range[0] <= self.snr_range[1]:
            raise ValueError(f"snr_range must be two positive numbers, low first, got {self.snr_range}")
        if not 0 < self.efficiency_range[0] <= self.efficiency_range[1] <= 1:
            raise ValueError(f"efficiency_range must lie in (0, 1], low first, got {self.efficiency_range}")
        if not 0.0 <= self.phantom_fraction <= 1.0:
            raise ValueError(f"phantom_fraction must lie in [0, 1], got {self.phantom_fraction}")
        if self.learning_rate <= 0 or self.grad_clip <= 0:
            raise ValueError("learning_rate and grad_clip must be positive")
        if self.prediction not in PREDICTIONS:
            raise ValueError(f"prediction must be one of {', '.join(PREDICTIONS)}, got {self.prediction!r}")

    def data_recipe(self) -> dict[str, Any]:
        """Return the fields that decide the simulated examples (the cache key, with the phantom ranges)."""
        names = ("n_train", "n_val", "matrix", "snr_range", "phantom_fraction", "efficiency_range", "seed")
        return {name: getattr(self, name) for name in names}
