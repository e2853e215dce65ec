"""The steps of `edgekit deploy` on the device, over the user's own ssh (edgekit.ssh): check its
Python, copy one tar stream, run the launcher (launcher.py, copied there), tunnel a port. Every
remote command is an argument list, each word shlex-quoted by Target.ssh; serve's arguments travel
inside serve.json, never through a shell.
"""

from __future__ import annotations

import json
import shlex
import subprocess
import tarfile
import tempfile
import time
import urllib.request
from pathlib import Path

from edgekit.errors import EdgekitError
from edgekit.onnxfile import files_on_disk
from edgekit.ssh import QUICK_S, RemoteCommandFailed, Target, ssh_run

LAUNCHER = Path(__file__).with_name("launcher.py")
PIP = "-m pip install 'edgekit[serve]'"
API_KEY = "api-key"  # its name in the deployment folder (the launcher reads it there too)
# Runs on the device: which modules `edgekit serve` needs are missing; makes the folder.
CHECK = """\
import importlib.util, json, os, sys
need = ("edgekit", "onnxruntime", "numpy", "uvicorn", "starlette", "prometheus_client")
need += tuple(sys.argv[2:])  # the served variants' runtimes
def has(module):
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False
missing = [m for m in need if not has(m)]
folder = os.path.abspath(os.path.expanduser(sys.argv[1]))
if not missing:
    os.makedirs(folder, exist_ok=True)
print(json.dumps({"missing": missing, "folder": folder, "python": sys.executable}))
"""


def _json(text: str, target: Target, what: str) -> dict:
    try:
        return json.loads(text.strip().splitlines()[-1])
    except (ValueError, IndexError):
        raise EdgekitError(f"{target.spec}: {what} printed no JSON: {text[-300:]!r}") from None


def run_launcher(target: Target, command: str, folder: str, timeout: float = QUICK_S) -> dict:
    try:
        out = ssh_run(
            target, target.python, f"{folder}/launcher.py", command, folder,
            what=f"running the launcher ({command})", timeout=timeout,
        )  # fmt: skip
    except RemoteCommandFailed as exc:
        text = str(exc)
        if "No such file" in text or "can't open file" in text:
            raise EdgekitError(
                f"{target.spec}: nothing is deployed in {folder} (no launcher there). Deploy "
                "first, or give the same --name and --remote-dir as when deploying."
            ) from None
        try:  # the launcher's own reply on failure
            return _json(text, target, "the launcher")
        except EdgekitError:
            raise EdgekitError(f"{target.spec}: the launcher failed: {text[-500:]}") from None
    return _json(out, target, "the launcher")


# The module each runtime's variants need on the device (onnxruntime is in CHECK's list).
RUNTIME_MODULES = {
    "openvino": "openvino",
    "litert": "ai_edge_litert",
    "executorch": "executorch",
    "onnxruntime-genai": "onnxruntime_genai",  # language models
}


def pip_line(runtime: str) -> str:
    from edgekit import runtimes as known

    if runtime == "onnxruntime-genai":
        return "python3 -m pip install onnxruntime-genai"
    return known.module(runtime).PIP


def check_device(target: Target, folder: str, runtimes: tuple[str, ...] = ()) -> dict:
    """The device's Python has what `edgekit serve` needs, and the module of each runtime in
    `runtimes` (the served variants'): EdgekitError with the pip line(s) if not."""

    extra = [RUNTIME_MODULES[r] for r in runtimes if r in RUNTIME_MODULES]
    try:
        reply = _json(
            ssh_run(target, target.python, "-c", CHECK, folder, *extra, what="checking the device"),
            target,
            "the device check",
        )
    except RemoteCommandFailed as exc:
        if exc.code == 127:
            raise EdgekitError(
                f"{target.spec}: `{target.python}` was not found on the device. Install Python 3 "
                f"there, then: python3 {PIP}  (or point --remote-python at its interpreter)"
            ) from None
        raise EdgekitError(f"{target.spec}: the device's Python failed: {exc}") from None
    if reply["missing"]:
        python = shlex.quote(target.python)
        lines = [f"  {python} {PIP}"]
        lines += [
            f"  {python} {pip_line(r).removeprefix('python3 ')}"
            for r in runtimes
            if RUNTIME_MODULES.get(r) in reply["missing"]
        ]
        raise EdgekitError(
            f"{target.spec}: the device's {target.python} lacks {', '.join(reply['missing'])}, "
            "which `edgekit serve` needs for this variant. Install them on the device with:\n"
            + "\n".join(lines)
            + "\n(on Raspberry Pi OS use a venv and --remote-python)"
        )
    return reply


def variant_files(folder: Path, row: dict) -> list[tuple[Path, str]]:
    """The variant's .onnx and external-data files, each with its name under model/."""
    path = Path(folder) / str(row["file"])
    base = Path("model") / Path(str(row["file"])).parent
    return [
        (file, (base / file.relative_to(path.parent)).as_posix()) for file in files_on_disk(path)
    ]


def pack(files: list[tuple[Path, str]], texts: dict[str, str], tar_path: Path) -> None:
    """One tar of local files (path, name in the folder) and generated texts (name: text). The
    API key goes in with mode 600, so that it is never readable by others on the device, not
    even between unpacking and a chmod."""

    def private(info: tarfile.TarInfo) -> tarfile.TarInfo:
        info.mode = 0o600
        return info

    with tempfile.TemporaryDirectory() as tmp, tarfile.open(tar_path, "w") as tar:
        tar.add(LAUNCHER, "launcher.py")
        for path, arcname in files:
            tar.add(path, arcname, filter=private if arcname == API_KEY else None)
        for arcname, text in texts.items():
            (Path(tmp) / "text").write_text(text)
            tar.add(Path(tmp) / "text", arcname)


def copy(target: Target, tar_path: Path, folder: str) -> None:
    size = tar_path.stat().st_size
    with open(tar_path, "rb") as bundle:
        try:
            ssh_run(target, "tar", "-xf", "-", "-C", folder, what="copying the model",
                 stdin=bundle, timeout=QUICK_S + size / 2e5)  # fmt: skip
        except RemoteCommandFailed as exc:
            raise EdgekitError(f"{target.spec}: copying failed: {exc}") from None


def forward(target: Target, remote_port: int, local_port: int, say) -> int:
    """`ssh -N -L` to the device's port until interrupted; returns once the tunnel ends."""
    argv = target.ssh("true")[:-3]  # ssh and its options, without `-- host command`
    argv += ["-N", "-o", "ExitOnForwardFailure=yes", "-L",
             f"127.0.0.1:{local_port}:127.0.0.1:{remote_port}", "--", target.host]  # fmt: skip
    proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    url = f"http://127.0.0.1:{local_port}"
    deadline = time.monotonic() + 30
    try:
        while True:
            if proc.poll() is not None:
                raise EdgekitError(
                    f"{target.spec}: the SSH tunnel ended: {proc.stderr.read().strip()[-300:]}. "
                    f"Is port {local_port} free here?"
                )
            try:
                with urllib.request.urlopen(url + "/v2/health/ready", timeout=2):
                    break
            except OSError:
                if time.monotonic() > deadline:
                    raise EdgekitError(
                        f"{target.spec}: no answer through the tunnel from the server on port "
                        f"{remote_port}; is it running? (`edgekit deploy --status`)"
                    ) from None
                time.sleep(0.2)
        say(f"URL: {url}  (SSH tunnel to {target.spec}; Ctrl-C ends it)")
        return proc.wait()
    finally:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
