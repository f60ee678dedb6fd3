"""Single files named by a local path or an ``s3://`` / ``gs://`` URI: read, test, save.

Why here: checkpoints given on a command line (``jiio train --out``, ``jiio bench
--checkpoint``, ``sweeps/solver.py --checkpoint``) and the fixed model of a solve sweep are
files outside the sweep tables, on any filesystem. These helpers are the only place that
turns such a string into a filesystem (``pyarrow.fs``), so the rest of the code never
imports it, and a checkpoint is written the same crash-safe way wherever it goes.
"""

from __future__ import annotations

import glob
import io
import os
from typing import Any

import pyarrow.fs as pafs

__all__ = [
    "clean_stale_saves",
    "file_exists",
    "is_remote",
    "load_bytes",
    "read_checkpoint",
    "save_checkpoint",
]


def is_remote(path: str) -> bool:
    """Whether ``path`` is a URI (``s3://``, ``gs://``, ...) rather than a local path."""
    return "://" in path


def file_exists(path: str) -> bool:
    """Whether a local path or an ``s3://`` / ``gs://`` URI names an existing file."""
    if not is_remote(path):
        return os.path.isfile(path)
    fs, p = pafs.FileSystem.from_uri(path)
    return fs.get_file_info(p).type == pafs.FileType.File


def load_bytes(path: str) -> bytes:
    """Read a file from a local path or an ``s3://`` / ``gs://`` URI."""
    if is_remote(path):
        fs, p = pafs.FileSystem.from_uri(path)
    else:
        fs, p = pafs.LocalFileSystem(), path
    if fs.get_file_info(p).type != pafs.FileType.File:
        raise FileNotFoundError(
            f"checkpoint {path!r} not found: pass a Trainer checkpoint saved with torch.save"
        )
    with fs.open_input_stream(p) as f:
        return f.read()


def read_checkpoint(path: str) -> Any:
    """``torch.load`` (CPU, weights only) of a local path or an ``s3://`` / ``gs://`` URI.
    Raises :class:`FileNotFoundError` when it is missing and :class:`ValueError` (one line)
    when it cannot be read as a checkpoint (unpickling, zip or EOF errors)."""
    import torch

    data = load_bytes(path)
    try:
        return torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except Exception as err:  # every failure here means "not a checkpoint"
        first = (str(err).strip().splitlines() or [type(err).__name__])[0]
        raise ValueError(f"cannot read checkpoint {path}: {first}") from None


def save_checkpoint(state: dict[str, Any], path: str) -> None:
    """Write ``torch.save(state)`` to ``path`` so that a crash leaves the old checkpoint or the
    new one, never a torn one. Object storage (``s3://``, ``gs://``): one PUT
    (:meth:`orchestrator.storage.ResultStore.put`). Local: ``path.tmp-<pid>`` beside it,
    fsync'ed, renamed over ``path``, the directory fsync'ed; the pid lets a later run remove
    the file of a run killed mid-write (:func:`clean_stale_saves`) without touching a live
    run's."""
    import torch

    if is_remote(path):
        from orchestrator.storage.store import ResultStore

        buf = io.BytesIO()
        torch.save(state, buf)
        parent, name = path.rstrip("/").rsplit("/", 1)
        store = ResultStore(parent)
        store.put(f"{store.base}/{name}", buf.getvalue())
        return
    tmp = f"{path}.tmp-{os.getpid()}"
    with open(tmp, "wb") as fh:
        torch.save(state, fh)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)
    fd = os.open(os.path.dirname(os.path.abspath(path)), os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def clean_stale_saves(path: str) -> None:
    """Remove ``path.tmp-<pid>`` files of runs that died while saving (their pid is gone)."""
    if is_remote(path):
        return  # a PUT leaves no temporary object
    for tmp in glob.glob(f"{glob.escape(path)}.tmp-*"):
        try:
            pid = int(tmp.rsplit("-", 1)[1])
            os.kill(pid, 0)  # alive (or not ours): leave it
        except ValueError:
            continue
        except ProcessLookupError:
            os.remove(tmp)
        except PermissionError:
            continue
