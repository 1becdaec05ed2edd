"""Checkpoint files of the training runs: written atomically, resumed only with the configuration they were made by."""

from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch


def save_atomic(state: dict[str, Any], path: Path) -> None:
    """Write ``state`` to ``path`` with ``torch.save`` under a temporary name, then rename it (no half files)."""
    partial = path.with_suffix(".part")
    torch.save(state, partial)
    partial.replace(path)


def refuse_other_config(path: Path, saved: dict[str, Any], current: dict[str, Any], *, growable: str) -> None:
    """Raise when a checkpoint's configuration differs from the current one in any field but ``growable``.

    Parameters
    ----------
    path : The checkpoint (named in the message).
    saved : Its configuration, as saved.
    current : The configuration of this run (``dataclasses.asdict``).
    growable : The one field that may differ (the length of the run: ``steps``, ``epochs``).

    Raises
    ------
    ValueError
        Naming the fields that differ.
    """
    differing = sorted(k for k in current if k != growable and _normal(saved.get(k)) != _normal(current[k]))
    if differing:
        raise ValueError(
            f"{path} was trained with a different configuration ({', '.join(differing)} differ); "
            "use another output folder or the same settings"
        )


def _normal(value: object) -> object:
    """Return a value comparable across a checkpoint round trip (tuples and lists alike)."""
    return list(value) if isinstance(value, tuple | list) else value


def load_or_make(path: Path, recipe: dict[str, Any], make: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    """Return the content cached at ``path`` when it was made by ``recipe``; else ``make()`` it and cache it first.

    Parameters
    ----------
    path : The cache file (written atomically, read with ``weights_only``: tensors, numbers, strings, lists).
    recipe : Everything that decides the content; a cache of another recipe is made again.
    make : Makes the content.
    """
    if path.exists():
        cached = torch.load(path, weights_only=True)
        if cached.get("recipe") == recipe and "content" in cached:
            content: dict[str, Any] = cached["content"]
            return content
    content = make()
    save_atomic({"recipe": recipe, "content": content}, path)
    return content
