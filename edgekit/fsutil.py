"""File helpers: atomic writes and folders (no half-written output, ever), locking, hashing."""

from __future__ import annotations

import contextlib
import ctypes
import errno
import fcntl
import hashlib
import json
import os
import re
import shutil
import stat
import tempfile
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

from edgekit import textsafe
from edgekit.errors import EdgekitError


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write to a temporary file in the same folder, then rename over `path` in one step."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # a short name beside it, whatever the length of its own (file names end at 255 bytes)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name[:40]}.", suffix=".tmp", dir=path.parent)
    try:
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes it 0600: as any new file instead
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _umask() -> int:
    umask = os.umask(0)
    os.umask(umask)
    return umask


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def sha256_folder(folder: Path) -> str:
    """One hash of a folder (an LM variant): every file's name and sha256, in name order."""
    digest = hashlib.sha256()
    for path in sorted(p for p in Path(folder).rglob("*") if p.is_file()):
        digest.update(f"{path.relative_to(folder).as_posix()}\0{sha256_file(path)}\n".encode())
    return digest.hexdigest()


def real_output_dir(path: Path, flag: str = "-o") -> Path:
    """`path` with every symbolic link resolved: the folder that is really written and locked. A
    link to a folder stays a link (to the new folder); a dangling link's target is created."""
    real = Path(os.path.realpath(Path(path).absolute()))
    if os.path.islink(real):  # realpath stops at a link it cannot follow: a loop
        raise EdgekitError(
            f"{flag} {path}: a symbolic link that leads back to itself ({real}), so no folder can "
            f"be made there. Give {flag} a folder, or a link to one."
        )
    return real


def check_output_dir(path: Path, flag: str = "-o") -> Path:
    """Fail before any work when `path` cannot become an output folder (a file, a device such as
    /dev/null, a folder that cannot be written): minutes of work must not end in a write error.
    Returns the real path (links resolved)."""
    real = real_output_dir(path, flag)
    shown = str(path) if real == Path(path).absolute() else f"{path} (a link to {real})"
    if real.exists() and not real.is_dir():
        raise EdgekitError(
            f"{flag} {shown} is a file, not a folder: edgekit writes several files into the "
            f"output folder. Give {flag} the path of a folder (it is created if missing)."
        )
    existing = real
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir():
        raise EdgekitError(f"{flag} {shown}: {existing} is a file, so no folder can be made there.")
    try:  # os.access says yes to root even on read-only mounts: really write
        fd, probe = tempfile.mkstemp(prefix=".edgekit-write-test-", dir=existing)
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        raise EdgekitError(
            f"{flag} {shown}: cannot write in {existing} ({exc.strerror or exc}). Choose an "
            "output folder you can write to."
        ) from None
    return real


# The list of what edgekit wrote into an output folder, written into it on publishing
# (docs/report-schema.md, "The output folder's manifest").
MANIFEST = ".edgekit-manifest.json"
MANIFEST_KIND = "edgekit-output-manifest"
_MAX_MANIFEST_BYTES = 64 << 20
_SHOWN = 8  # foreign files named in the message


@contextlib.contextmanager
def output_folder(out_dir: Path, inputs: Sequence[Path] = (), flag: str = "-o") -> Iterator[Path]:
    """Build a new output folder and publish it whole, or not at all.

    Yields an empty staging folder on `out_dir`'s filesystem. When the block ends normally the
    staging folder becomes `out_dir` in one step (an atomic exchange of the two folders where the
    kernel offers it), so a reader sees the old set of files or the new one, never a mix. When it
    raises (or is interrupted) the staging folder is removed and `out_dir` is untouched. A lock
    (on the real path: links resolved) keeps two runs from writing one folder; staging folders
    left by killed runs are swept. A folder is replaced only when edgekit knows every file in it
    (its manifest, with sizes and hashes): anything else is refused before the work, and checked
    again just before publishing."""
    given = Path(out_dir)
    out_dir = check_output_dir(given, flag)
    _refuse_inputs_inside(out_dir, inputs)
    # Stage beside the folder (then swap); where that is another filesystem or cannot be
    # written (out_dir is a mount point, a container volume), stage inside it instead.
    beside = not os.path.ismount(out_dir) and _writable(out_dir.parent)
    stage_in = out_dir.parent if beside else out_dir
    stage_in.mkdir(parents=True, exist_ok=True)
    # Short names whatever the folder's name (file names end at 255 bytes).
    tag = hashlib.sha256(os.fsencode(out_dir.name)).hexdigest()[:12]
    prefix, lock = f".edgekit-staging-{tag}.", f".edgekit-lock-{tag}"
    mount_point = {"lost+found", lock}

    def machinery(name: str) -> bool:  # what staging inside the folder adds to it
        return not beside and (name in mount_point or name.startswith(prefix))

    with _lock(stage_in / lock, given):
        for stale in stage_in.glob(prefix + "*"):  # we hold the lock: their runs are gone
            if re.fullmatch(r"[\w]{8}", stale.name[len(prefix) :]):
                shutil.rmtree(stale, ignore_errors=True)
        before = _replaceable(out_dir, given, flag, machinery)
        staging = Path(tempfile.mkdtemp(prefix=prefix, dir=stage_in))
        try:
            # mkdtemp makes it 0700: the folder keeps its mode, or gets a new folder's
            mode = stat.S_IMODE(out_dir.stat().st_mode) if out_dir.is_dir() else 0o777 & ~_umask()
            os.chmod(staging, mode)
            yield staging
            _write_manifest(staging)
            _unchanged_since(before, out_dir, given, machinery)
            if beside:
                _swap_in(staging, out_dir)
            else:
                _move_files_in(staging, out_dir, machinery)
        except OSError as exc:
            if exc.errno in (errno.ENOSPC, errno.EDQUOT):
                raise EdgekitError(
                    f"The disk holding {given} is full ({exc}). Nothing was changed in "
                    f"{given}; free some space and run again."
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


Listing = dict[str, tuple[int, int, int, int]]  # relative path: (mode, size, mtime_ns, inode)


def _stamp(info: os.stat_result) -> tuple[int, int, int, int]:
    return info.st_mode, info.st_size, info.st_mtime_ns, info.st_ino


def _walk(folder: Path, skip: Callable[[str], bool] = lambda name: False) -> Iterator:
    """(relative path, lstat) of everything under `folder`, folders as "sub/"; links are not
    followed; `skip` names top-level entries to leave out."""
    pending = [("", folder)]
    while pending:
        prefix, current = pending.pop()
        with os.scandir(current) as entries:
            for entry in sorted(entries, key=lambda e: e.name):
                if not prefix and skip(entry.name):
                    continue
                info = entry.stat(follow_symlinks=False)
                if stat.S_ISDIR(info.st_mode):
                    yield prefix + entry.name + "/", info
                    pending.append((prefix + entry.name + "/", Path(entry.path)))
                else:
                    yield prefix + entry.name, info


def _replaceable(out_dir: Path, given: Path, flag: str, skip: Callable[[str], bool]) -> Listing:
    """Refuse (exit 2, naming them) when `out_dir` holds anything edgekit did not write, or a file
    it wrote that has changed since (size or sha256 differ from its manifest). Returns what is
    there, to be compared again before publishing. A missing or empty folder is fine."""
    if not out_dir.is_dir():
        return {}
    known = _known_files(out_dir)
    listing: Listing = {}
    foreign: list[str] = []
    changed: list[str] = []
    try:
        for rel, info in _walk(out_dir, skip):
            listing[rel] = _stamp(info)
            if rel == MANIFEST and stat.S_ISREG(info.st_mode):
                continue
            if stat.S_ISDIR(info.st_mode):
                if not any(path.startswith(rel) for path in known):
                    foreign.append(rel)
            elif not stat.S_ISREG(info.st_mode) or rel not in known:
                foreign.append(rel)
            elif not _same(out_dir / rel, info, *known[rel]):
                changed.append(rel)
            if len(foreign) + len(changed) > _SHOWN:
                break
    except OSError as exc:
        raise EdgekitError(
            f"{flag} {given}: cannot read what the folder holds ({exc}); edgekit replaces a folder "
            f"only when it knows every file in it. Choose a new or empty folder with {flag}."
        ) from None
    if foreign or changed:
        parts = []
        if foreign:
            parts.append(f"files edgekit did not write: {_names(foreign)}")
        if changed:
            parts.append(f"files changed since edgekit wrote them: {_names(changed)}")
        raise EdgekitError(
            f"The output folder {given} holds {'; and '.join(parts)}. Publishing the new results "
            "replaces the whole folder, which would delete them, so nothing was done. Move them "
            f"out of the folder (or delete them if they are not needed), or choose a new or empty "
            f"folder with {flag}."
        )
    return listing


def _names(paths: list[str]) -> str:
    shown = ", ".join(textsafe.plain(p) for p in paths[:_SHOWN])
    return shown + (", …" if len(paths) > _SHOWN else "")


def _same(path: Path, info: os.stat_result, size: int | None, sha256: str | None) -> bool:
    """The size, then the sha256 (every byte read: sizes alone miss an edit that keeps the
    length; sha256 read 0.9 GB/s here, little beside a run's minutes)."""
    if size is not None and info.st_size != size:
        return False
    return sha256 is None or sha256_file(path) == sha256


def _known_files(out_dir: Path) -> dict[str, tuple[int | None, str | None]]:
    """What edgekit wrote into `out_dir`: its manifest; for folders written before manifests
    existed, what their report.json lists."""
    manifest = _read_manifest(out_dir / MANIFEST)
    if manifest is not None:
        return manifest
    from edgekit.report.read import files_listed

    return files_listed(out_dir)


def _read_manifest(path: Path) -> dict[str, tuple[int, str]] | None:
    """{relative path: (size, sha256)}, or None when the file is missing or not a manifest."""
    try:
        if not stat.S_ISREG(path.lstat().st_mode) or path.stat().st_size > _MAX_MANIFEST_BYTES:
            return None
        data = json.loads(path.read_bytes())
        if data["kind"] != MANIFEST_KIND:
            return None
        return {
            str(f["path"]): (int(f["size_bytes"]), str(f["sha256"]))
            for f in data["files"]
            if isinstance(f, dict) and type(f.get("size_bytes")) is int
        }
    except (OSError, ValueError, TypeError, KeyError, RecursionError):
        return None


def _write_manifest(folder: Path) -> None:
    files = [
        {"path": rel, "size_bytes": info.st_size, "sha256": sha256_file(folder / rel)}
        for rel, info in _walk(folder)
        if stat.S_ISREG(info.st_mode)
    ]
    text = json.dumps({"kind": MANIFEST_KIND, "version": 1, "files": files}, indent=2)
    atomic_write_text(folder / MANIFEST, text + "\n")


def _unchanged_since(before: Listing, out_dir: Path, given: Path, skip) -> None:
    """The folder as checked before the work, still (the check's listing, again, without hashing:
    a file added or rewritten meanwhile changes the listing)."""
    now = {rel: _stamp(info) for rel, info in _walk(out_dir, skip)} if out_dir.is_dir() else {}
    differ = sorted(rel for rel in before.keys() | now.keys() if before.get(rel) != now.get(rel))
    if differ:
        raise EdgekitError(
            f"Files in the output folder {given} changed while edgekit ran ({_names(differ)}), "
            "so it was left as it is and the new results were not written. Leave the folder "
            "alone during a run (or choose another with -o) and run again."
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


def _move_files_in(staging: Path, out_dir: Path, machinery: Callable[[str], bool]) -> None:
    """Publish into a folder that cannot be swapped: the old files move aside first (a reader
    sees files missing, never old and new mixed), then the new ones move in; undone on error."""
    aside = Path(tempfile.mkdtemp(prefix=".edgekit-staging-old-", dir=staging))
    old = [p for p in out_dir.iterdir() if not machinery(p.name)]  # all ours: checked
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
