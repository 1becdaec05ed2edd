"""Shipping trained qMRI Diffusor weights: copy them here with a check figure and write their model card from the run.

As ``ship`` for PUQ: the card is generated from the run's files. The check figure is the T1 NRMSE in the object of
the mean of ``validation_t1_nrmse``'s short generations on the first ``CHECK_EXAMPLES`` validation slices, which the
test that holds the shipped weights to their card re-simulates from their seed.
"""

import dataclasses
from pathlib import Path
from typing import Any

import torch

from qmri_models.diffusor.model import Diffusor
from qmri_models.pretrained import PRETRAINED_DIR
from qmri_models.training.configs import DiffusorTrainingConfig
from qmri_models.training.diffusor_data import simulate_ir_examples
from qmri_models.training.recon_data import VAL_SEED_OFFSET
from qmri_models.training.ship import changed_flags
from qmri_models.training.train_diffusor import (
    VALIDATION_DDIM_STEPS,
    VALIDATION_SAMPLES,
    WEIGHTS,
    validation_t1_nrmse,
)

CHECK_EXAMPLES = 2
_PREDICTED = {"epsilon": "noise (the paper's)", "v_prediction": "velocity (the paper: the noise)", "sample": "map"}
"""What the loss compares, by ``DiffusorTrainingConfig.prediction``."""
PAPER_CHANNELS = (128, 256, 256)
"""The paper's U-Net levels; the card names a reduction from them."""


def check_examples_t1_nrmse(config: dict[str, Any], diffusor: Diffusor) -> float:
    """Return the Diffusor's validation T1 NRMSE on the first ``CHECK_EXAMPLES`` validation slices of its recipe."""
    examples = simulate_ir_examples(
        CHECK_EXAMPLES,
        matrix=int(config["matrix"]),
        snr_range=(float(config["snr_range"][0]), float(config["snr_range"][1])),
        phantom_fraction=float(config["phantom_fraction"]),
        efficiency_range=(float(config["efficiency_range"][0]), float(config["efficiency_range"][1])),
        seed=int(config["seed"]) + VAL_SEED_OFFSET,
    )
    return validation_t1_nrmse(diffusor, examples, torch.device("cpu"))


def ship_diffusor(run: Path, name: str, *, device_note: str, dest: Path = PRETRAINED_DIR) -> Path:
    """Copy a ``qmri train diffusor`` run's weights into ``dest`` as ``diffusor_<name>.pt`` and write the card.

    Parameters
    ----------
    run : The run's folder (its ``weights.pt``).
    name : The shipped name (``t1_ir``), what ``DiffusorGadget weights`` takes.
    device_note : Where it was trained, in words (``cpu, 2 cores``).
    dest : Where the shipped files go.

    Returns
    -------
    The model card's path.
    """
    weights = torch.load(run / WEIGHTS, map_location="cpu", weights_only=True)
    check = check_examples_t1_nrmse(weights["config"], Diffusor.from_state(weights["diffusor"]))
    weights["check"] = {"n_examples": CHECK_EXAMPLES, "val_t1_nrmse": check}
    torch.save(weights, dest / f"diffusor_{name}.pt")
    card = dest / f"DIFFUSOR_{name.upper()}.md"
    card.write_text(model_card(name, weights, check, device_note))
    return card


def model_card(name: str, weights: dict[str, Any], check: float, device_note: str) -> str:
    """Return the Markdown model card of shipped Diffusor weights."""
    config, history, state = weights["config"], weights["history"], weights["diffusor"]
    flags = changed_flags(config, dataclasses.asdict(DiffusorTrainingConfig()), {})
    command_flags = f" {flags}" if flags else ""
    parameters = sum(t.numel() for t in state["denoiser"]["state_dict"].values())
    tis = ", ".join(f"{t:g}" for t in state["ti_ms"])
    snr, efficiency = (f"{low:g}-{high:g}" for low, high in (config["snr_range"], config["efficiency_range"]))
    phantoms = round(config["phantom_fraction"] * 100)
    levels = ", ".join(str(c) for c in config["channels"])
    paper_levels = ", ".join(str(c) for c in PAPER_CHANNELS)
    steps = ", ".join(str(s) for s in history["steps"])
    losses = ", ".join(f"{v:.4f}" for v in history["val_loss"])
    nrmses = ", ".join(f"{v:.4f}" for v in history["val_t1_nrmse"])
    patch = state["patch"]
    predicted = _PREDICTED[config["prediction"]]
    generation = (
        f"patch by patch ({patch} px patches, half a patch apart by default: `DiffusorGadget stride`), the "
        "overlapping predictions averaged at every step (`qmri_models.diffusion.patches`)"
        if patch
        else "on whole slices"
    )
    return f"""# qMRI Diffusor weights `{name}` (inversion recovery, TIs {tis} ms)

Trained in this repository on simulated data only; nothing was downloaded.

- Data: {config["n_train"]} training and {config["n_val"]} validation slices from `qmri_models.simulation` in
  image space ({phantoms}% random sphere phantoms, the rest random brain slices), {config["matrix"]}^2, SNR drawn
  log-uniformly from {snr} per slice, inversion efficiency from {efficiency}, seed {config["seed"]} (validation
  seed +{VAL_SEED_OFFSET}).
- Targets: T1, PD and B scaled into [-1, 1] by the paper's `2 tanh(x) - 1` (`qmri_models.diffusor.scaling`).
- Network: MONAI's diffusion U-Net, levels of {levels} channels (paper {paper_levels}), {config["res_blocks"]}
  residual block(s) per level, attention at the lowest level; {parameters / 1e6:.2f} M weights. Linear DDPM
  schedule of {config["train_steps"]} steps.
- Optimisation: MSE of the predicted {predicted}, Adam {config["learning_rate"]:g}, gradient norm
  clipped at {config["grad_clip"]:g}, batch {config["batch_size"]} of random {config["crop"]} px crops with flips,
  {config["steps"]} steps (the paper: 100 epochs of 3976 whole slices, about 50 000 steps).
- Generation: {generation}.
- Wall time {history["wall_s"] / 60:.1f} min on {device_note}.
- Validation along the run (steps {steps}): that loss {losses}; T1 NRMSE in the object (mean of
  {VALIDATION_SAMPLES} generations, {VALIDATION_DDIM_STEPS} DDIM steps) {nrmses}.
- Check figure (tests hold the shipped file to it): that T1 NRMSE on the first {CHECK_EXAMPLES} validation slices
  {check:.5f}.
- Command: `qmri train diffusor --out RUN{command_flags}`, then `qmri train diffusor-ship RUN --name {name}`.
"""
