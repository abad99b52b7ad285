"""Where gpuconv caches compiled kernels on disk, and how a cache file is written.

Both device backends cache what they compile: the emulator its shared libraries
(``gpuconv/_emulator/_build.py``), the CUDA backend its cubins
(``gpuconv/backends/device/_executor.py``). They share the directory rule and the atomic write
here, so that neither path has to import the other (the CUDA path never loads the emulator).
"""

from __future__ import annotations

import contextlib
import os
import pathlib
import tempfile


def cache_dir(kind: str) -> pathlib.Path:
    """The cache directory of ``kind`` (``"emulator"`` or ``"cuda"``):
    ``$GPUCONV_CACHE_DIR/<kind>``, else ``$XDG_CACHE_HOME/gpuconv/<kind>``, else
    ``~/.cache/gpuconv/<kind>``. Not created here.
    """
    env = os.environ.get("GPUCONV_CACHE_DIR")
    if env:
        return pathlib.Path(env) / kind
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = pathlib.Path(xdg) if xdg else pathlib.Path.home() / ".cache"
    return base / "gpuconv" / kind


def fsync_dir(directory: pathlib.Path) -> None:
    """Flush ``directory``'s entries (a rename into it) to disk; errors are ignored."""
    with contextlib.suppress(OSError):
        fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def write_atomically(path: pathlib.Path, data: bytes, prefix: str) -> None:
    """Write ``data`` to ``path`` so that a concurrent reader (another thread or process) sees
    the whole file or none: to a temporary file named ``<prefix>*.tmp`` beside it, flushed to
    disk, then renamed into place (and the directory flushed). ``path``'s directory must
    exist."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=prefix, suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
    fsync_dir(path.parent)
