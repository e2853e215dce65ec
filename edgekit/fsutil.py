"""File helpers: atomic writes and folders (no half-written output, ever), locking, hashing."""

from __future__ import annotations

import contextlib
import ctypes
import errno
import fcntl
import hashlib
import os
import re
import shutil
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path

from edgekit.errors import EdgekitError


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


# What edgekit writes into an output folder; anything else there is the user's and is never replaced.
_OUR_FILES = re.compile(
    r"(report\.(json|md|html)|.+\.onnx|.+\.onnx\.data|\.edgekit-.+|lost\+found)"
)


@contextlib.contextmanager
def output_folder(out_dir: Path, inputs: Sequence[Path] = ()) -> Iterator[Path]:
    """Build a new output folder and publish it whole, or not at all.

    Yields an empty staging folder on `out_dir`'s filesystem. When the block ends normally the
    staging folder becomes `out_dir` in one step (an atomic exchange of the two folders where the
    kernel offers it), so a reader sees the old set of files or the new one, never a mix. When it
    raises (or is interrupted) the staging folder is removed and `out_dir` is untouched. A lock
    keeps two runs from writing one folder; staging folders left by killed runs are swept."""
    out_dir = Path(out_dir).absolute()
    check_output_dir(out_dir)
    _refuse_inputs_inside(out_dir, inputs)
    _refuse_foreign_files(out_dir)
    # Stage beside the folder (then swap); where that is another filesystem or cannot be
    # written (out_dir is a mount point, a container volume), stage inside it instead.
    beside = not os.path.ismount(out_dir) and _writable(out_dir.parent)
    stage_in = out_dir.parent if beside else out_dir
    stage_in.mkdir(parents=True, exist_ok=True)
    prefix = f".edgekit-staging-{out_dir.name}."
    with _lock(stage_in / f".edgekit-lock-{out_dir.name}", out_dir):
        for stale in stage_in.glob(prefix + "*"):  # we hold the lock: their runs are gone
            if re.fullmatch(r"[\w]{8}", stale.name[len(prefix) :]):
                shutil.rmtree(stale, ignore_errors=True)
        staging = Path(tempfile.mkdtemp(prefix=prefix, dir=stage_in))
        try:
            yield staging
            if beside:
                _swap_in(staging, out_dir)
            else:
                _move_files_in(staging, out_dir)
        except OSError as exc:
            if exc.errno in (errno.ENOSPC, errno.EDQUOT):
                raise EdgekitError(
                    f"The disk holding {out_dir} is full ({exc}). Nothing was changed in "
                    f"{out_dir}; free some space and run again."
                ) from None
            raise
        finally:
            shutil.rmtree(staging, ignore_errors=True)


def _writable(folder: Path) -> bool:
    try:
        check_output_dir(folder)
    except EdgekitError:
        return False
    return True


def _refuse_inputs_inside(out_dir: Path, inputs: Sequence[Path]) -> None:
    root = out_dir.resolve()
    for given in inputs:
        path = Path(given).resolve()
        if path == root or root in path.parents:
            raise EdgekitError(
                f"The output folder {out_dir} holds an input of this run ({given}); publishing "
                "the new results replaces that folder, which would delete the input. Choose "
                "another output folder with -o, or move the input out of it."
            )


def _refuse_foreign_files(out_dir: Path) -> None:
    if not out_dir.is_dir():
        return
    foreign = sorted(p.name for p in out_dir.iterdir() if not _OUR_FILES.fullmatch(p.name))
    if foreign:
        shown = ", ".join(foreign[:5]) + (
            f", … {len(foreign) - 5} more" if len(foreign) > 5 else ""
        )
        raise EdgekitError(
            f"The output folder {out_dir} holds files edgekit did not write ({shown}). Writing "
            "the results there would replace them. Choose a new or empty folder with -o."
        )


@contextlib.contextmanager
def _lock(lock_path: Path, out_dir: Path) -> Iterator[None]:
    """An exclusive lock (flock: the kernel drops it when the process dies, even by SIGKILL);
    the lock file names the holder's pid and is removed on release."""
    while True:
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(fd, 32).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            raise EdgekitError(
                f"Another edgekit run (pid {holder}) is writing {out_dir} right now. Wait "
                "for it to finish, or choose another output folder with -o."
            ) from None
        # The previous holder may have removed the file between our open and our lock.
        if os.path.exists(lock_path) and os.stat(lock_path).st_ino == os.fstat(fd).st_ino:
            break
        os.close(fd)
    try:
        os.ftruncate(fd, 0)
        os.write(fd, str(os.getpid()).encode())
        yield
    finally:
        with contextlib.suppress(OSError):
            os.unlink(lock_path)
        os.close(fd)


_RENAME_EXCHANGE = 2


def _exchange(a: Path, b: Path) -> bool:
    """Swap two paths atomically (Linux renameat2 RENAME_EXCHANGE); False where unsupported."""
    renameat2 = getattr(ctypes.CDLL(None, use_errno=True), "renameat2", None)
    if renameat2 is None:
        return False
    at_fdcwd = -100
    result = renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), _RENAME_EXCHANGE)
    if result == 0:
        return True
    code = ctypes.get_errno()
    if code in (errno.EINVAL, errno.ENOSYS, errno.ENOTSUP):  # filesystem or kernel without it
        return False
    raise OSError(code, os.strerror(code), str(b))


def _swap_in(staging: Path, out_dir: Path) -> None:
    if not out_dir.exists():
        os.rename(staging, out_dir)
        return
    if not _exchange(staging, out_dir):  # two renames: briefly no folder, never a mix
        old = Path(tempfile.mkdtemp(prefix=staging.name + "-old", dir=staging.parent))
        os.rename(out_dir, old / "x")
        os.rename(staging, out_dir)
        os.rename(old / "x", staging)
        old.rmdir()
    # `staging` now holds the old folder; the caller removes it.


def _move_files_in(staging: Path, out_dir: Path) -> None:
    """Publish into a folder that cannot be swapped: the old files move aside first (a reader
    sees files missing, never old and new mixed), then the new ones move in; undone on error."""
    aside = Path(tempfile.mkdtemp(prefix=".edgekit-staging-old-", dir=staging))
    old = [p for p in out_dir.iterdir() if _OUR_FILES.fullmatch(p.name) and p.name[0] != "."]
    new = [p for p in staging.iterdir() if p != aside]
    moved: list[Path] = []
    try:
        for path in old:
            os.rename(path, aside / path.name)
        for path in sorted(new, key=lambda p: p.name.startswith("report.")):  # reports last
            os.rename(path, out_dir / path.name)
            moved.append(out_dir / path.name)
    except BaseException:
        for path in moved:
            os.rename(path, staging / path.name)
        for path in aside.iterdir():
            os.rename(path, out_dir / path.name)
        raise
