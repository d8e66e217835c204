"""Output locations, checked at the start of a command (before a model is loaded or anything
is computed), so that a bad ``--out`` never costs a run's results.

`prepare_out_dir` makes an output folder and proves it writable with a probe file;
`prepare_out_file` does the same for the folder of an output file. Both raise `InputError`
naming the path: an existing file where a folder is wanted (or the reverse), a file among its
parent folders, or a folder that cannot be created or written.
"""

from __future__ import annotations

import os
from pathlib import Path

from topkattn.errors import InputError


def _reason(e: OSError) -> str:
    return e.strerror or type(e).__name__


def prepare_out_dir(path: str | os.PathLike) -> Path:
    """Create the output folder ``path`` (and its parents) and check that files can be written
    in it; returns it as a `Path`. `InputError` naming ``path`` when it cannot be used."""
    if path is None or str(path).strip() == "":
        raise InputError(f"output folder must be a path, got {path!r}")
    p = Path(path).expanduser()
    if p.exists() and not p.is_dir():
        raise InputError(f"output folder {str(path)!r} is an existing file; give a folder path")
    for parent in p.parents:
        if parent.exists():
            if not parent.is_dir():
                raise InputError(f"output folder {str(path)!r} lies under {str(parent)!r}, which "
                                 "is a file, not a folder")
            break
    try:
        p.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise InputError(f"cannot create output folder {str(path)!r}: {_reason(e)}") from None
    probe = p / f".topkattn-write-probe-{os.getpid()}"
    try:
        with open(probe, "wb"):
            pass
        probe.unlink()
    except OSError as e:
        raise InputError(f"output folder {str(path)!r} is not writable: {_reason(e)}") from None
    return p


def prepare_out_file(path: str | os.PathLike, suffixes: tuple[str, ...] = ()) -> Path:
    """Check an output file path: not an existing folder, one of ``suffixes`` when given, and
    a folder that `prepare_out_dir` accepts (created). Returns it as a `Path`."""
    if path is None or str(path).strip() == "":
        raise InputError(f"output file must be a path, got {path!r}")
    p = Path(path).expanduser()
    if p.is_dir():
        raise InputError(f"output file {str(path)!r} is an existing folder; give a file path")
    if suffixes and p.suffix not in suffixes:
        raise InputError(f"output file {str(path)!r} must end in {' or '.join(suffixes)}")
    prepare_out_dir(p.parent)
    if p.exists() and not os.access(p, os.W_OK):
        raise InputError(f"output file {str(path)!r} exists and is not writable")
    return p


__all__ = ["prepare_out_dir", "prepare_out_file"]
