"""Benchmark on the device itself, over SSH (edgekit.ssh), and on fleets of devices. For each
device:

  mktemp -d  →  copy worker.py (and its runtimes/), device.py, the feeds and the models there (one
  tar stream over ssh; edgekit.lm.bench copies bench_worker.py and LM folders the same way)
  →  probe: python3 with the worker's modules (numpy, onnxruntime; onnxruntime-genai for an LM)?
  device.collect() there  →  one `ssh … python3 worker.py` per job, speaking the same JSON-lines
  protocol as a local worker  →  rm -rf the folder

File names on the device are edgekit's own (m0/, m1/, ...); a model's file name travels only
inside the tar stream and the JSON protocol, never through a shell.
"""

from __future__ import annotations

import contextlib
import functools
import json
import re
import sys
import tarfile
import tempfile
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from edgekit.benchmark import device
from edgekit.benchmark.runner import WORKER
from edgekit.errors import EdgekitError
from edgekit.onnxfile import files_on_disk
from edgekit.ssh import QUICK_S, RemoteCommandFailed, Target, ssh_run

if TYPE_CHECKING:
    from edgekit.report.schema import Report

DEVICE_PY = Path(__file__).with_name("device.py")  # stdlib-only: collects device info there
RUNTIMES = Path(__file__).parents[1] / "runtimes"  # the worker's runtimes, imported beside it
NEEDS = ("numpy", "onnxruntime")  # what the tensor worker imports on the device
FIX = "python3 -m pip install onnxruntime numpy"

# Runs on the device with its python3: which of the modules named in argv[1] (comma-separated) are
# missing, else the device description (by device.py in the folder given as argv[2], if any) and
# those modules' versions.
PROBE = """\
import importlib, importlib.util, json, platform, sys
wanted = sys.argv[1].split(",")
missing = [m for m in wanted if importlib.util.find_spec(m) is None]
if missing or len(sys.argv) < 3:
    print(json.dumps({"missing": missing, "machine": platform.machine()}))
else:
    sys.path.insert(0, sys.argv[2])
    import device
    versions = {m: getattr(importlib.import_module(m), "__version__", None) for m in wanted}
    print(json.dumps({"device": device.collect(), "versions": versions}))
"""


@dataclass
class Remote:
    """Where the workers run: a temporary folder on a device (the counterpart of runner.Local)."""

    target: Target
    folder: str
    paths: dict[str, str] = field(default_factory=dict)  # local resolved path -> path on device
    info: dict = field(default_factory=dict)
    versions: dict = field(default_factory=dict)  # module -> version, of the modules it needs
    worker: str = "worker.py"  # the worker's file in the folder

    def worker_command(self) -> list[str]:
        return self.target.ssh(self.target.python, f"{self.folder}/{self.worker}")

    def path(self, local: Path) -> str:
        return self.paths[str(Path(local).resolve())]

    def device(self) -> dict:
        return {**self.info, "target": self.target.spec}

    def load_avg(self) -> list[float] | None:
        code = "import json, os; print(json.dumps([round(x, 2) for x in os.getloadavg()]))"
        try:
            return json.loads(
                ssh_run(self.target, self.target.python, "-c", code, what="reading load")
            )
        except (EdgekitError, RemoteCommandFailed, ValueError):
            return None  # extra information, never a reason to lose the measurements

    def after(self) -> dict | None:
        """device.conditions() on the device once the runs are over (None if unreadable)."""
        code = "import json, sys; sys.path.insert(0, sys.argv[1]); import device; "
        code += "print(json.dumps(device.conditions()))"
        try:
            out = ssh_run(self.target, self.target.python, "-c", code, self.folder, what="reading")
            return json.loads(out)
        except (EdgekitError, RemoteCommandFailed, ValueError):
            return None  # extra information, never a reason to lose the measurements


def probe(target: Target, folder: str | None = None, needs=NEEDS, fix: str = FIX) -> dict:
    """Check the device's Python has the modules `needs` (EdgekitError with `fix` if not); with
    the folder holding device.py, also describe the device and give the modules' versions."""
    try:
        out = ssh_run(
            target,
            target.python,
            "-c",
            PROBE,
            ",".join(needs),
            *([folder] if folder else []),
            what="probing",
        )
        reply = json.loads(out)
    except RemoteCommandFailed as exc:
        if exc.code == 127:  # the shell found no such command
            raise EdgekitError(
                f"{target.spec}: `{target.python}` was not found on the device. Install Python 3 "
                f"there, then: {fix}  (or point --remote-python at its interpreter)"
            ) from None
        raise EdgekitError(f"{target.spec}: the device's Python failed: {exc}") from None
    except ValueError:
        raise EdgekitError(f"{target.spec}: the device probe printed no JSON.") from None
    machine = reply.get("machine") or (reply.get("device") or {}).get("arch")
    if device.unsupported_arch(machine):  # a 32-bit ARM OS: no onnxruntime wheels
        raise EdgekitError(f"{target.spec}: {device.unsupported_arch(machine)}")
    if reply.get("missing"):
        raise EdgekitError(
            f"{target.spec}: the device's {target.python} lacks "
            f"{' and '.join(reply['missing'])}. Install them on the device with:\n  {fix}\n"
            "(on Raspberry Pi OS, in a venv: python3 -m venv ~/edgekit-venv, then use "
            "~/edgekit-venv/bin/python3 -m pip … and --remote-python ~/edgekit-venv/bin/python3)"
        )
    return reply


def describe(target: Target) -> dict:
    """device.collect() on the device before anything is copied there (device.py goes as code)."""
    code = DEVICE_PY.read_text() + "\nimport json\nprint(json.dumps(collect()))\n"
    try:
        return json.loads(
            ssh_run(target, target.python, "-c", code, what="reading the device's CPU")
        )
    except (RemoteCommandFailed, ValueError) as exc:
        raise EdgekitError(f"{target.spec}: could not describe the device: {exc}") from None


def _pack(models: dict[str, Path], feeds_npz: Path, tar: tarfile.TarFile) -> dict[str, str]:
    """What the tensor worker needs, into the tar; returns local path -> name in the folder."""
    names = {str(feeds_npz.resolve()): "feeds.npz"}
    tar.add(WORKER, "worker.py")
    tar.add(RUNTIMES, "runtimes", filter=lambda info: None if "__pycache__" in info.name else info)
    tar.add(feeds_npz, "feeds.npz")
    for i, path in enumerate(models.values()):
        path = Path(path)
        names[str(path.resolve())] = f"m{i}/{path.name}"
        for file in files_on_disk(path):  # the .onnx and its external-data files
            rel = file.relative_to(path.parent)
            if ".." in rel.parts:
                raise EdgekitError(f"{path} keeps external data outside its folder ({rel}).")
            tar.add(file, f"m{i}/{rel.as_posix()}")
    return names


@contextlib.contextmanager
def session(
    target: Target,
    models: dict[str, Path],
    feeds_npz: Path,
    progress: Callable[[str], None] | None = None,
) -> Iterator[Remote]:
    """A temporary folder on the device with the worker, models and feeds; removed on the way out,
    also after an error or Ctrl-C."""
    pack = functools.partial(_pack, models, feeds_npz)
    with device_folder(target, pack, NEEDS, FIX, "worker.py", progress) as place:
        yield place


@contextlib.contextmanager
def device_folder(
    target: Target,
    pack: Callable[[tarfile.TarFile], dict[str, str]],
    needs: tuple[str, ...],
    fix: str,
    worker: str,
    progress: Callable[[str], None] | None = None,
) -> Iterator[Remote]:
    """A temporary folder on the device holding device.py and what `pack` puts into the tar
    stream (it returns local path -> name in the folder), its Python checked for the modules
    `needs` (the fix: `fix`); the Remote starts `worker` from there. Removed on the way out, also
    after an error or Ctrl-C."""
    say = progress or (lambda _msg: None)
    say(f"connecting to {target.spec}")
    try:
        folder = ssh_run(target, "mktemp", "-d", "-t", "edgekit.XXXXXXXX", what="connecting")
    except RemoteCommandFailed as exc:
        raise EdgekitError(f"{target.spec}: cannot make a temporary folder: {exc}") from None
    folder = folder.strip()
    if not re.fullmatch(r"/[\w./-]+", folder):
        raise EdgekitError(f"{target.spec}: mktemp printed {folder[:100]!r}, not a folder path.")
    try:
        with tempfile.TemporaryDirectory(prefix="edgekit-pack-") as tmp:
            tar_path = Path(tmp) / "bundle.tar"
            with tarfile.open(tar_path, "w") as tar:
                tar.add(DEVICE_PY, "device.py")
                names = pack(tar)
            size = tar_path.stat().st_size
            say(f"copying {size / 1e6:.1f} MB to {target.spec}")
            with open(tar_path, "rb") as bundle:
                try:  # a slow link gets time in proportion to the bytes (0.2 MB/s at worst)
                    ssh_run(target, "tar", "-xf", "-", "-C", folder, what="copying the models",
                         stdin=bundle, timeout=QUICK_S + size / 2e5)  # fmt: skip
                except RemoteCommandFailed as exc:
                    raise EdgekitError(f"{target.spec}: copying failed: {exc}") from None
        say(f"checking Python on {target.spec}")
        reply = probe(target, folder, needs, fix)
        paths = {local: f"{folder}/{name}" for local, name in names.items()}
        yield Remote(target, folder, paths, reply["device"], reply.get("versions", {}), worker)
    finally:
        try:
            ssh_run(target, "rm", "-rf", "--", folder, what="removing the temporary folder")
        except (EdgekitError, RemoteCommandFailed) as exc:
            print(f"edgekit: warning: could not remove {folder} on {target.spec}: {exc}",
                  file=sys.stderr)  # fmt: skip


# ---- fleets -------------------------------------------------------------------------------------


@dataclass
class Outcome:
    target: Target
    report: Report
    error: str | None  # the device failed as a whole (unreachable, timed out, no onnxruntime)


def run_fleet(targets: list[Target], bench_one: Callable[[Target], Report], fail_report) -> list:
    """Benchmark every device at once (one thread each: the work is on the devices). A device
    that fails gets `fail_report(target, message)` and the others finish."""

    def one(target: Target) -> Outcome:
        try:
            return Outcome(target, bench_one(target), None)
        except EdgekitError as exc:
            return Outcome(target, fail_report(target, str(exc)), str(exc))

    with ThreadPoolExecutor(max_workers=len(targets)) as pool:
        return list(pool.map(one, targets))
