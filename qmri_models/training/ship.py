"""Shipping trained PUQ weights: copy them here with a check figure and write their model card from the run itself.

The card is generated, not written by hand: data recipe, network size, steps, wall time and validation figures come
from the run's files, the commands from its configuration. The check figure is the reconstruction network's NRMSE
(dropout off) on the first ``CHECK_EXAMPLES`` validation slices, which are re-simulated from their seed by the test
that holds the shipped weights to their card.
"""

import dataclasses
from pathlib import Path
from typing import Any

import torch

from qmri_models.pretrained import PRETRAINED_DIR, MapName, load_recon_network
from qmri_models.training.configs import ReconTrainingConfig
from qmri_models.training.recon_data import VAL_SEED_OFFSET, simulate_recon_examples
from qmri_models.training.train_recon import validation_nrmse

CHECK_EXAMPLES = 3
_PAPER_SIZES = ("hidden", "n_iterations", "dropout", "matrix", "n_coils")
"""The sizes of the PUQ paper's network and data (``ReconTrainingConfig``'s defaults); the card names reductions."""


def check_examples_nrmse(map_name: MapName, config: dict[str, Any], source: str | Path) -> float:
    """Return the network's NRMSE (dropout off) on the first ``CHECK_EXAMPLES`` validation slices of its recipe."""
    examples = simulate_recon_examples(
        map_name,
        CHECK_EXAMPLES,
        matrix=int(config["matrix"]),
        n_coils=int(config["n_coils"]),
        accelerations=tuple(config["accelerations"]),
        snr=float(config["snr"]),
        seed=int(config["seed"]) + VAL_SEED_OFFSET,
    )
    return validation_nrmse(load_recon_network(source), examples, torch.device("cpu"))


def ship(map_name: MapName, recon_run: Path, fit_run: Path, *, device_note: str, dest: Path = PRETRAINED_DIR) -> Path:
    """Copy a run's weights into ``dest`` as the shipped ``map_name`` weights and write the model card.

    Parameters
    ----------
    map_name : ``t1`` or ``t2``.
    recon_run : Folder of ``qmri train puq-recon`` or ``puq-error-head`` (its ``weights.pt``; the latter's carries
        the error head).
    fit_run : Folder of ``qmri train puq-fit`` (its ``fit_weights.pt``).
    device_note : Where it was trained, in words (``cpu, 2 cores, 1 thread``).
    dest : Where the shipped files go.

    Returns
    -------
    The model card's path.
    """
    recon = torch.load(recon_run / "weights.pt", map_location="cpu", weights_only=True)
    fit = torch.load(fit_run / "fit_weights.pt", map_location="cpu", weights_only=True)
    check = check_examples_nrmse(map_name, recon["config"], recon_run / "weights.pt")
    recon["check"] = {"n_examples": CHECK_EXAMPLES, "val_nrmse": check}
    torch.save(recon, dest / f"puq_recon_{map_name}.pt")
    torch.save(fit, dest / f"puq_fit_{map_name}.pt")
    card = dest / f"PUQ_{map_name.upper()}.md"
    card.write_text(model_card(map_name, recon, fit, check, device_note))
    return card


def model_card(map_name: MapName, recon: dict[str, Any], fit: dict[str, Any], check: float, device_note: str) -> str:
    """Return the Markdown model card of one map's shipped weights."""
    rc, rh = recon["config"], recon["history"]
    fc, fh = fit["config"], fit["history"]
    contrast = "MOLLI (TIs 251-4251 ms)" if map_name == "t1" else "T2-prep (durations 0-125 ms)"
    defaults = dataclasses.asdict(ReconTrainingConfig())
    reduced = [f"{k} {rc[k]} (paper {defaults[k]})" for k in _PAPER_SIZES if rc.get(k) != defaults[k]]
    recon_flags = changed_flags(rc, defaults, {"n_coils": "coils", "n_iterations": "iterations"})
    fit_flags = _named_flags(fc, ("n_train", "n_val", "mc_samples", "phantom_fraction", "epochs", "loss", "seed"))
    stage_one_run = "RUN" if recon.get("error_head") is None else "RUN_HEAD"
    phantoms = _phantom_recipe(fc["phantom_fraction"], fit.get("phantom_ranges"))
    by_object = _by_object(fh["val_rmse_by_object_ms"], " ms") + _median_ape(fh.get("val_median_ape_by_object", {}))
    return f"""# PUQ {map_name.upper()} weights ({contrast})

Trained in this repository on simulated data only; nothing was downloaded.

## Stage 1: unrolled reconstruction with MC dropout (`puq_recon_{map_name}.pt`)
- Data: {rc["n_train"]} training and {rc["n_val"]} validation slices from `qmri_models.simulation` (random brain
  slices, {rc["n_coils"]} random coils, 1D Cartesian masks at {", ".join(f"{a}x" for a in rc["accelerations"])} with the
  PUQ paper's ACS, SNR {rc["snr"]:g}), {rc["matrix"]}^2, seed {rc["seed"]} (validation seed +{VAL_SEED_OFFSET}).
  Coil maps: ESPIRiT from each slice's own calibration lines, as on the stream.
- Network: {rc["n_iterations"]} iterations, {rc["hidden"]} hidden channels, dropout {rc["dropout"]:g}.
  Reduced from the paper: {"; ".join(reduced) or "nothing"}.
- Optimisation: Adam, learning rate {rc["learning_rate"]:g}, gradient norm clipped at {rc["grad_clip"]:g}, batch
  {rc["batch_size"]}, {rc["steps"]} steps, MSE on real and imaginary parts.
- Wall time {rh["wall_s"] / 60:.1f} min on {device_note}.
- Validation NRMSE in the tissue (dropout off), {rc["n_val"]} slices: {rh["val_nrmse"][-1]:.4f}
  (zero-filled {rh["val_zero_filled_nrmse"]:.4f}); along the run: {", ".join(f"{v:.4f}" for v in rh["val_nrmse"])}
  at steps {", ".join(str(s) for s in rh["steps"])}.
- Check figure (tests hold the shipped file to it): NRMSE on the first {CHECK_EXAMPLES} validation slices
  {check:.5f}.
- Command: `qmri train puq-recon --map {map_name} --out RUN {recon_flags}`
{_error_head_section(map_name, recon.get("error_head"), device_note)}
## Stage 2: learned fit (`puq_fit_{map_name}.pt`), guided and unguided
- Data: stage-1 output (MC mean and per-phase uncertainty, {fc["mc_samples"]} samples) of {fc["n_train"]} new simulated
  slices ({fh["n_train_pixels"]} object pixels) and {fc["n_val"]} validation slices ({fh["n_val_pixels"]}), seed
  {fc["seed"]}, same recipe as stage 1{phantoms}.
- Network: the paper's MLP, 5 fully connected layers of {fc["hidden"]} units, ReLU; inputs normalised by the
  pixel's largest signal (not the first phase's: MOLLI's first TI sits on the null of fat). Adam
  {fc["learning_rate"]:g}, batch {fc["batch_size"]}, {_LOSS_WORDS[fc["loss"]]}, {fc["epochs"]} epochs (paper: 200).
- Wall time {fh["wall_s"] / 60:.1f} min (training only) on {device_note}.
- Validation RMSE, all pixels: {fh["val_rmse_guided_ms"][-1]:.1f} ms guided,
  {fh["val_rmse_unguided_ms"][-1]:.1f} ms unguided{by_object}.
- Command: `qmri train puq-fit --map {map_name} --out RUN_FIT --recon-weights {stage_one_run}/weights.pt {fit_flags}`
"""


def _phantom_recipe(fraction: float, ranges: dict[str, tuple[float, float]] | None) -> str:
    """Return the card's words on the phantom slices of the learned fit's data (empty without any).

    Raises
    ------
    ValueError
        If the data had phantom slices but the weights do not say what they were drawn from (``phantom_ranges``).
    """
    if fraction == 0:
        return ""
    if ranges is None:
        raise ValueError("the fit weights had phantom slices but carry no phantom_ranges")
    return f"""; a fraction {fraction:g} of each split's slices (rounded) are random
  sphere phantoms instead of brain: {_span(ranges["sphere_count"])} spheres with T1 {_span(ranges["sphere_t1_ms"])} ms
  and T2 {_span(ranges["sphere_t2_ms"])} ms (log-uniform, T2 at most T1), PD {_span(ranges["pd"])}, in fluid of
  T1 {_span(ranges["fluid_t1_ms"])} ms and T2 {_span(ranges["fluid_t2_ms"])} ms; their pixels are the spheres and
  fluid"""


_LOSS_WORDS = {
    "mse": "MSE of the map over its scale (the paper's)",
    "relative": "squared relative error (not the paper's MSE: see `train_fit.fit_loss`)",
}
"""The card's words for each ``FitTrainingConfig.loss``."""


def _span(bounds: tuple[float, float]) -> str:
    """Return a range as the card writes it (``100-3000``)."""
    return f"{bounds[0]:g}-{bounds[1]:g}"


def _by_object(figures: dict[str, float], unit: str) -> str:
    """Return the card's words on a validation figure on brain and phantom pixels apart (empty without phantoms).

    ``unit`` follows each number as written (``" ms"``, ``"%"``).
    """
    if "guided phantom" not in figures:
        return ""
    return ";\n  " + "; ".join(
        f"{name} pixels {figures[f'guided {name}']:.1f}{unit} guided, {figures[f'unguided {name}']:.1f}{unit} unguided"
        for name in ("brain", "phantom")
        if f"guided {name}" in figures
    )


def _median_ape(figures: dict[str, float]) -> str:
    """Return the card's words on the validation median absolute percentage error (empty when the run has none)."""
    words = _by_object(figures, "%")
    return words and ".\n- Validation median absolute percentage error:" + words.removeprefix(";")


def _error_head_section(map_name: MapName, head: dict[str, Any] | None, device_note: str) -> str:
    """Return the model card's section on the error head (empty without one)."""
    if head is None:
        return ""
    hc, hh = head["config"], head["history"]
    flags = _named_flags(hc, ("n_train", "n_val", "mc_samples", "hidden", "steps"))
    return f"""
## Stage 1b: error head (in `puq_recon_{map_name}.pt`), the per-phase uncertainty
- Beyond the paper: the MC-dropout SD of these reduced networks follows the signal, not the error, so a small CNN
  (`qmri_models.networks.error_head`, {hc["hidden"]} hidden channels) predicts the MC mean's RMS error per phase
  and pixel from the mean, the zero-filled image and the MC SD. The reconstruction network is frozen.
- Data: {hc["n_train"]} training and {hc["n_val"]} validation slices, new seeds ({hc["seed"]}), same recipe, MC over
  {hc["mc_samples"]} samples. Gaussian negative log-likelihood of the true error; Adam {hc["learning_rate"]:g},
  batch {hc["batch_size"]}, {hc["steps"]} steps.
- Wall time {hh["wall_s"] / 60:.1f} min (training only) on {device_note}.
- Validation, all phases in the tissue (blurred as `qmri evaluate-puq` does): Pearson r of predicted and true |error|
  {hh["val_correlation"][-1]:.3f} (the MC SD alone: {hh["val_mc_sd_correlation"]:.3f}); mean squared error over
  mean predicted variance {hh["val_calibration"][-1]:.2f} (1 is calibrated).
- Command: `qmri train puq-error-head --map {map_name} --out RUN_HEAD --recon-weights RUN/weights.pt {flags}`
"""


def changed_flags(config: dict[str, Any], defaults: dict[str, Any], names: dict[str, str]) -> str:
    """Return the ``qmri train`` options of a run's configuration that differ from the defaults, space-separated.

    ``names`` gives the options whose name is not the field's; ``map_name`` is an option of its own (``--map``).
    """
    parts = []
    for key, value in config.items():
        if key == "map_name" or _flag_value(defaults.get(key)) == _flag_value(value):
            continue
        parts.append(f"--{names.get(key, key).replace('_', '-')} {_flag_value(value)}")
    return " ".join(parts)


def _named_flags(config: dict[str, Any], names: tuple[str, ...]) -> str:
    """Return the command-line options of the named configuration fields, in that order."""
    return " ".join(f"--{name.replace('_', '-')} {_flag_value(config[name])}" for name in names)


def _flag_value(value: object) -> str:
    """Return a configuration value as written on the command line."""
    return " ".join(str(v) for v in value) if isinstance(value, list | tuple) else str(value)
