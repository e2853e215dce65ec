"""File helpers: atomic writes (no half-written output, ever) and hashing."""

from __future__ import annotations

import hashlib
import os
import tempfile
from pathlib import Path


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write to a temporary file in the same folder, then rename over `path` in one step."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        # mkstemp makes the file 0600; outputs get the permissions any new file would get.
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def check_output_dir(path: Path, flag: str = "-o") -> Path:
    """Fail before any work when `path` cannot become an output folder (a file, a device such as
    /dev/null, a folder that cannot be written): minutes of work must not end in a write error."""
    from edgekit.errors import EdgekitError

    path = Path(path)
    if path.exists() and not path.is_dir():
        raise EdgekitError(
            f"{flag} {path} is a file, not a folder: edgekit writes several files into the "
            f"output folder. Give {flag} the path of a folder (it is created if missing)."
        )
    existing = path
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir():
        raise EdgekitError(f"{flag} {path}: {existing} is a file, so no folder can be made there.")
    try:  # os.access says yes to root even on read-only mounts: really write
        fd, probe = tempfile.mkstemp(prefix=".edgekit-write-test-", dir=existing)
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        raise EdgekitError(
            f"{flag} {path}: cannot write in {existing} ({exc.strerror or exc}). Choose an "
            "output folder you can write to."
        ) from None
    return path
