"""Pick the torch device a gadget computes on."""

import torch


def torch_device(name: str) -> torch.device:
    """Return the device called ``name``: ``auto`` is CUDA when present, else CPU.

    Parameters
    ----------
    name : ``auto``, ``cpu``, ``cuda`` or ``cuda:N``.

    Returns
    -------
    The device.

    Raises
    ------
    ValueError
        If ``name`` asks for CUDA on a machine without it, or is not a device name.
    """
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError as exc:
        raise ValueError(f"unknown device {name!r}; use auto, cpu or cuda") from exc
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {name!r} asked for, but this machine has no CUDA device; use auto or cpu")
    return device
