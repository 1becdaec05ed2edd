"""Every file a chain writes stays inside the output folder (``qmri replay --out``, ``qmri serve --output``)."""

from pathlib import Path, PurePath


def inside(output_dir: Path, relative: str, what: str) -> Path:
    """Return ``output_dir / relative`` once it is sure to stay inside ``output_dir``, symlinks resolved.

    Parameters
    ----------
    output_dir : The output folder.
    relative : A folder named by a chain property, relative to ``output_dir``.
    what : The property's name, for the error.

    Returns
    -------
    The path inside the output folder (it need not exist yet).

    Raises
    ------
    ValueError
        If ``relative`` is empty, absolute, climbs with ``..``, or resolves (through a symlink) outside the folder.
    """
    name = PurePath(relative)
    if not relative.strip() or "\x00" in relative or name.is_absolute() or ".." in name.parts:
        raise ValueError(
            f"property '{what}' is {relative!r}: it must name a folder inside the output folder, relative to it, "
            "without '..'"
        )
    root = Path(output_dir).resolve()
    path = root / name
    if not path.resolve().is_relative_to(root):
        raise ValueError(f"property '{what}' ({relative!r}) leads out of the output folder through a symbolic link")
    return path
