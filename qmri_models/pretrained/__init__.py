"""Shipped PUQ and qMRI Diffusor weights (trained here, each with its model card in this folder) and their loaders.

``puq_recon_t1.pt`` / ``puq_recon_t2.pt``: the unrolled reconstruction networks for MOLLI and T2-prep.
``puq_fit_t1.pt`` / ``puq_fit_t2.pt``: the learned fits, guided and unguided. ``PUQ_T1.md`` / ``PUQ_T2.md``: the cards.
A loader takes a map name (``t1``, ``t2``: the shipped file) or a path to a file written by ``qmri train``.
``map_quantile_head_<chain>.pt``: the map quantile heads of the PUQ chains (their cards are the calibration cards of
``calibration/<chain>_quantiles.md``, which name them). ``diffusor_<name>.pt``: qMRI Diffusor weights (``t1_ir``, card
``DIFFUSOR_T1_IR.md``; ``qmri train diffusor`` and ``diffusor-ship`` write them).
"""

import hashlib
from pathlib import Path
from typing import Any, Literal, get_args

import torch

from qmri_models.diffusor.model import Diffusor
from qmri_models.networks.fit_mlp import FitMlp
from qmri_models.networks.map_quantile_head import MapQuantileHead
from qmri_models.networks.unrolled import UnrolledRecon
from qmri_models.shipped import shipped_or_path

PRETRAINED_DIR = Path(__file__).resolve().parent
MapName = Literal["t1", "t2"]
"""The maps the shipped networks make: T1 and T2, in ms."""
MAP_NAMES: tuple[MapName, ...] = get_args(MapName)
CONTRAST_OF_MAP: dict[MapName, Literal["molli", "t2prep"]] = {"t1": "molli", "t2": "t2prep"}
"""The simulated contrast that trains each map's network: MOLLI for T1, T2-prep for T2."""


def weights_path(kind: str, source: str | Path) -> Path:
    """Return the weights file of ``kind`` (``recon`` or ``fit``): the shipped one for a map name, else the path.

    Raises
    ------
    FileNotFoundError
        If the file does not exist (the message names what to run).
    """
    path = PRETRAINED_DIR / f"puq_{kind}_{source}.pt" if str(source) in MAP_NAMES else Path(source)
    if not path.is_file():
        raise FileNotFoundError(
            f"no PUQ {kind} weights at {path}; give t1, t2 or a weights file from `qmri train puq-{kind}`"
        )
    return path


def weights_sha256(kind: str, source: str | Path) -> str:
    """Return the SHA-256 of the weights file of ``kind`` and ``source`` (as ``weights_path``): a cache key."""
    return hashlib.sha256(weights_path(kind, source).read_bytes()).hexdigest()


def load_recon_network(source: str | Path) -> UnrolledRecon:
    """Return the reconstruction network of ``source`` (``t1``, ``t2`` or a ``weights.pt`` path), on the CPU.

    A file written by ``qmri train puq-error-head`` also carries the network's error head.
    """
    state = _load(weights_path("recon", source))
    config = state["config"]
    head = state.get("error_head")
    network = UnrolledRecon(
        n_phases=int(state["state_dict"]["denoisers.0.first.weight"].shape[1]) // 2,
        n_iterations=int(config["n_iterations"]),
        hidden=int(config["hidden"]),
        dropout=float(config["dropout"]),
        error_head_hidden=None if head is None else int(head["config"]["hidden"]),
    )
    network.load_state_dict(state["state_dict"])
    return network.eval()


def load_fit_mlp(source: str | Path, *, guided: bool = True) -> FitMlp:
    """Return the learned fit of ``source`` (``t1``, ``t2`` or a ``fit_weights.pt`` path), guided or not, on the CPU."""
    state = _load(weights_path("fit", source))
    part = state["guided" if guided else "unguided"]
    mlp = FitMlp(n_phases=int(part["n_phases"]), hidden=int(part["hidden"]), guided=guided, map_name=state["map_name"])
    mlp.load_state_dict(part["state_dict"])
    return mlp.eval()


def shipped_quantile_heads() -> dict[str, Path]:
    """Return the shipped map quantile heads by name (the chain, e.g. ``t1_molli_puq``)."""
    prefix = "map_quantile_head_"
    return {path.stem.removeprefix(prefix): path for path in sorted(PRETRAINED_DIR.glob(f"{prefix}*.pt"))}


def load_map_quantile_head(source: str | Path) -> MapQuantileHead:
    """Return the map quantile head of a shipped name (``shipped_quantile_heads``) or of a ``weights.pt`` path.

    Raises
    ------
    FileNotFoundError
        If it is no shipped name and no file (the message lists the shipped names).
    """
    return MapQuantileHead.from_state(_load(quantile_head_path(source)))


def quantile_head_path(source: str | Path) -> Path:
    """Return the weights file of a shipped map quantile head name or a path.

    Raises
    ------
    FileNotFoundError
        If it is no shipped name and no file (the message lists the shipped names).
    """
    return shipped_or_path(
        source,
        shipped_quantile_heads(),
        what="map quantile head",
        made_by="a weights file from `qmri train map-quantile-head`",
    )


def quantile_head_training(source: str | Path) -> dict[str, Any]:
    """Return how a map quantile head (as ``load_map_quantile_head`` takes it) was trained.

    The record ``qmri train map-quantile-head`` keeps in the weights: chain, accelerations, recipe, settings, losses.
    """
    return dict(_load(quantile_head_path(source))["training"])


def shipped_diffusors() -> dict[str, Path]:
    """Return the shipped qMRI Diffusor weights by name (``t1_ir``: T1, PD and B from the 7-TI IR protocol)."""
    prefix = "diffusor_"
    return {path.stem.removeprefix(prefix): path for path in sorted(PRETRAINED_DIR.glob(f"{prefix}*.pt"))}


def load_diffusor(source: str | Path) -> Diffusor:
    """Return the qMRI Diffusor of a shipped name (``shipped_diffusors``) or of a ``weights.pt`` path, on the CPU.

    Raises
    ------
    FileNotFoundError
        If it is no shipped name and no file (the message lists the shipped names).
    """
    path = shipped_or_path(
        source, shipped_diffusors(), what="Diffusor weights", made_by="a weights file from `qmri train diffusor`"
    )
    return Diffusor.from_state(torch.load(path, map_location="cpu", weights_only=True)["diffusor"])


def _load(path: Path) -> dict[str, Any]:
    """Return a weights file's content (tensors on the CPU)."""
    state: dict[str, Any] = torch.load(path, map_location="cpu", weights_only=True)
    return state
