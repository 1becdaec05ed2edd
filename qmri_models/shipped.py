"""Resolving what a user names: a shipped file by its name, or else a file at that path."""

from pathlib import Path


def shipped_or_path(source: str | Path, shipped: dict[str, Path], *, what: str, made_by: str) -> Path:
    """Return the shipped file named ``source``, or else the file at the path ``source``.

    Parameters
    ----------
    source : A shipped name (a key of ``shipped``) or a path.
    shipped : The shipped files by name.
    what : What the file is, for the error (e.g. ``calibration file``).
    made_by : What writes such files, for the error (e.g. ``a file written by `qmri calibrate```).

    Raises
    ------
    FileNotFoundError
        If ``source`` is no shipped name and no file; the message lists the shipped names.
    """
    path = shipped[source] if isinstance(source, str) and source in shipped else Path(source)
    if not path.is_file():
        raise FileNotFoundError(f"no {what} {str(source)!r}: give a shipped name {sorted(shipped)} or {made_by}")
    return path
