"""Benchmark on the device itself, over SSH, and on fleets of devices.

The system's OpenSSH client does the talking, so keys, the agent, ~/.ssh/config, ProxyJump and
known_hosts work as everywhere else. edgekit adds BatchMode=yes (never prompt: a fleet runs
unattended) and time limits, and never touches host key checking. For each device:

  mktemp -d  →  copy worker.py, device.py, the feeds and the models there (one tar stream over ssh)
  →  probe: python3 with numpy and onnxruntime? device.collect() there  →  one `ssh … python3
  worker.py` per job, speaking the same JSON-lines protocol as a local worker  →  rm -rf the folder

Every remote command is a list of arguments, each shlex-quoted, because ssh hands the remote shell
one string. File names on the device are edgekit's own (m0/, m1/, ...); a model's file name
travels only inside the tar stream and the JSON protocol, never through a shell.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import re
import shlex
import subprocess
import sys
import tarfile
import tempfile
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

from edgekit.benchmark import device, flops
from edgekit.benchmark.runner import WORKER
from edgekit.errors import EdgekitError

DEVICE_PY = Path(__file__).with_name("device.py")  # stdlib-only: collects device info there
FIX = "python3 -m pip install onnxruntime numpy"
ENV_OPTIONS = "EDGEKIT_SSH_OPTIONS"  # extra ssh arguments, shell-style, e.g. "-i ~/.ssh/pi -F cfg"
# Ours come after the user's: for ssh the first value given for an option wins.
SSH_DEFAULTS = (
    "-o", "BatchMode=yes", "-o", "ConnectTimeout=15",
    "-o", "ServerAliveInterval=10", "-o", "ServerAliveCountMax=3",
)  # fmt: skip
QUICK_S = 60  # limit for each short remote command (mktemp, probe, cleanup)
NAME = re.compile(r"(?=.*[A-Za-z0-9])[A-Za-z0-9_.][A-Za-z0-9_.-]*")  # never "." or ".."

# Runs on the device with its python3: which modules are missing, else the device description
# (by device.py in the folder given, if any).
PROBE = """\
import importlib.util, json, platform, sys
missing = [m for m in ("numpy", "onnxruntime") if importlib.util.find_spec(m) is None]
if missing or len(sys.argv) < 2:
    print(json.dumps({"missing": missing, "machine": platform.machine()}))
else:
    sys.path.insert(0, sys.argv[1])
    import device
    print(json.dumps({"device": device.collect()}))
"""


@dataclass(frozen=True)
class Target:
    spec: str  # as the user wrote it: ssh://user@host:port or an alias from ~/.ssh/config
    host: str
    user: str | None = None
    port: int | None = None
    python: str = "python3"  # the device's interpreter
    ssh_options: tuple[str, ...] = ()  # -o values, e.g. ("UserKnownHostsFile=/tmp/kh",)
    name: str = ""  # its folder in a fleet's output

    def ssh(self, *remote: str) -> list[str]:
        """The local argument list that runs `remote` (one quoted command line) on the device."""
        argv = ["ssh", *shlex.split(os.environ.get(ENV_OPTIONS, ""))]
        for option in self.ssh_options:
            argv += ["-o", option]
        argv += SSH_DEFAULTS
        if self.port:
            argv += ["-p", str(self.port)]
        if self.user:
            argv += ["-l", self.user]
        return [*argv, "--", self.host, shlex.join(remote)]


def parse_target(
    text: str, python: str = "python3", ssh_options=(), name: str | None = None
) -> Target:
    """`ssh://[user@]host[:port]` or a bare host alias (as in ~/.ssh/config)."""
    user = port = None
    if text.startswith("ssh://"):
        try:
            url = urlsplit(text)
            host, user, port = url.hostname, url.username, url.port
        except ValueError as exc:
            raise EdgekitError(f"Cannot read the target {text!r}: {exc}.") from None
        if url.path not in ("", "/") or url.query or url.fragment or url.password:
            raise EdgekitError(
                f"The target {text!r} has more than ssh://[user@]host[:port]; "
                "give the device's Python with --remote-python."
            )
    else:
        host = text
    # a leading '-' would make ssh read the host (or user) as an option
    if not host or not NAME.fullmatch(host.strip("[]").replace(":", "")):
        raise EdgekitError(
            f"The target {text!r} is neither ssh://[user@]host[:port] nor a host alias."
        )
    if user is not None and not NAME.fullmatch(user):
        raise EdgekitError(f"The user name in the target {text!r} is not a plain user name.")
    name = name or (f"{host}-{port}" if port else host).replace(":", "_")
    return Target(text, host, user, port, python, tuple(ssh_options), name)


def read_targets(path: Path, python: str = "python3", ssh_options=()) -> list[Target]:
    """A fleet file: one target per line (# comments), or TOML tables `[name]` with `target = "…"`
    and optionally `python = "…"`."""
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise EdgekitError(f"Cannot read the targets file {path}: {exc.strerror}.") from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        text = None
    if text is None or "\0" in text:
        raise EdgekitError(
            f"The targets file {path} is not a text file (it holds binary data). List one "
            'ssh://[user@]host[:port] per line, or TOML tables [name] with target = "…".'
        )
    lines = [ln.strip() for ln in text.splitlines() if ln.strip() and ln.strip()[0] != "#"]
    if not any(ln.startswith("[") for ln in lines):
        return [parse_target(ln, python, ssh_options) for ln in lines]
    if sys.version_info < (3, 11):
        raise EdgekitError(
            f"{path} is TOML, which needs Python 3.11 (tomllib). On Python 3.10, list one target "
            "per line instead."
        )
    import tomllib

    try:
        tables = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise EdgekitError(f"The targets file {path} is not valid TOML: {exc}.") from None
    targets = []
    for key, table in tables.items():
        if not NAME.fullmatch(key) or not isinstance(table, dict) or "target" not in table:
            raise EdgekitError(
                f'{path}: each device is a table [name] (letters, digits, . _ -) with target = "…"'
                f"; [{key}] is not."
            )
        py = str(table.get("python", python))
        targets.append(parse_target(str(table["target"]), py, ssh_options, name=key))
    return targets


def unique_names(targets: list[Target]) -> list[Target]:
    """Give each device its own output folder: pi, pi-2, ..."""
    seen: set[str] = set()
    out = []
    for t in targets:
        name, n = t.name, 2
        while name in seen:
            name, n = f"{t.name}-{n}", n + 1
        seen.add(name)
        out.append(dataclasses.replace(t, name=name))
    return out


# ---- one device ---------------------------------------------------------------------------------


def ssh_run(target: Target, *remote: str, what: str, stdin=None, timeout: float = QUICK_S) -> str:
    """Run one short command on the device; its stdout, or EdgekitError saying what failed."""
    try:
        done = subprocess.run(
            target.ssh(*remote),
            stdin=stdin if stdin is not None else subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=timeout,
        )
    except subprocess.TimeoutExpired:
        raise EdgekitError(
            f"{target.spec}: timed out after {timeout:.0f} s while {what}."
        ) from None
    except FileNotFoundError:
        raise EdgekitError("The OpenSSH client `ssh` is not installed on this machine.") from None
    if done.returncode == 255:  # ssh's own failure: connection, authentication, host key
        lines = done.stderr.strip().splitlines()
        by_hand = ["ssh", *(["-p", str(target.port)] if target.port else [])]
        by_hand += [*(["-l", target.user] if target.user else []), target.host, "true"]
        raise EdgekitError(
            f"{target.spec}: ssh failed while {what}: {lines[-1] if lines else 'no message'}. "
            f"Check that `{shlex.join(by_hand)}` works without prompting (edgekit runs ssh with "
            "BatchMode=yes; known_hosts and keys are used as usual)."
        )
    if done.returncode != 0:
        raise RemoteCommandFailed(done.returncode, done.stderr.strip())
    return done.stdout


class RemoteCommandFailed(Exception):
    def __init__(self, code: int, stderr: str):
        super().__init__(stderr or f"exit code {code}")
        self.code = code


@dataclass
class Remote:
    """Where the workers run: a temporary folder on a device (the counterpart of runner.Local)."""

    target: Target
    folder: str
    paths: dict[str, str] = field(default_factory=dict)  # local resolved path -> path on device
    info: dict = field(default_factory=dict)

    def worker_command(self) -> list[str]:
        return self.target.ssh(self.target.python, f"{self.folder}/worker.py")

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


def probe(target: Target, folder: str | None = None) -> dict:
    """Check the device's Python has numpy and onnxruntime (EdgekitError with the fix if not);
    with the folder holding device.py, also describe the device."""
    try:
        out = ssh_run(
            target, target.python, "-c", PROBE, *([folder] if folder else []), what="probing"
        )
        reply = json.loads(out)
    except RemoteCommandFailed as exc:
        if exc.code == 127:  # the shell found no such command
            raise EdgekitError(
                f"{target.spec}: `{target.python}` was not found on the device. Install Python 3 "
                f"there, then: {FIX}  (or point --remote-python at its interpreter)"
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
            f"{' and '.join(reply['missing'])}. Install them on the device with:\n  {FIX}\n"
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


def _pack(models: dict[str, Path], feeds_npz: Path, tar_path: Path) -> dict[str, str]:
    """Everything the device needs in one tar file; returns local path -> name in the folder."""
    names = {str(feeds_npz.resolve()): "feeds.npz"}
    with tarfile.open(tar_path, "w") as tar:
        tar.add(WORKER, "worker.py")
        tar.add(DEVICE_PY, "device.py")
        tar.add(feeds_npz, "feeds.npz")
        for i, path in enumerate(models.values()):
            path = Path(path)
            names[str(path.resolve())] = f"m{i}/{path.name}"
            for file in flops.files_on_disk(path):  # the .onnx and its external-data files
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
            names = _pack(models, feeds_npz, tar_path)
            size = tar_path.stat().st_size
            say(f"copying {size / 1e6:.1f} MB to {target.spec}")
            with open(tar_path, "rb") as bundle:
                try:  # a slow link gets time in proportion to the bytes (0.2 MB/s at worst)
                    ssh_run(target, "tar", "-xf", "-", "-C", folder, what="copying the models",
                         stdin=bundle, timeout=QUICK_S + size / 2e5)  # fmt: skip
                except RemoteCommandFailed as exc:
                    raise EdgekitError(f"{target.spec}: copying failed: {exc}") from None
        say(f"checking Python on {target.spec}")
        info = probe(target, folder)["device"]
        paths = {local: f"{folder}/{name}" for local, name in names.items()}
        yield Remote(target, folder, paths, info)
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
    report: dict
    error: str | None  # the device failed as a whole (unreachable, timed out, no onnxruntime)


def run_fleet(targets: list[Target], bench_one: Callable[[Target], dict], fail_report) -> list:
    """Benchmark every device at once (one thread each: the work is on the devices). A device
    that fails gets `fail_report(target, message)` and the others finish."""

    def one(target: Target) -> Outcome:
        try:
            return Outcome(target, bench_one(target), None)
        except EdgekitError as exc:
            return Outcome(target, fail_report(target, str(exc)), str(exc))

    with ThreadPoolExecutor(max_workers=len(targets)) as pool:
        return list(pool.map(one, targets))


def summary(outcomes: list[Outcome]) -> dict:
    """Each device against the first that worked, by edgekit.report.compare (variants matched by
    name); a failed device's rows show as FAILED."""
    from edgekit.report import compare as cmp

    base = next((o for o in outcomes if o.error is None), None)
    devices = [
        {
            "name": o.target.name,
            "target": o.target.spec,
            "device": None if o.error else cmp.device_name(o.report),
            "report": f"{o.target.name}/report.json",
            "error": o.error,
        }
        for o in outcomes
    ]
    comparisons = []
    if base is not None:
        for o in outcomes:
            if o is not base:
                labels = (base.target.name, o.target.name)
                comparisons.append(cmp.compare(base.report, o.report, labels=labels))
    failed = sum(1 for o in outcomes if o.error)
    return {"devices": devices, "baseline": base and base.target.name,
            "comparisons": comparisons, "failed": failed}  # fmt: skip
