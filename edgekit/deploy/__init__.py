"""`edgekit deploy` as a library: put a variant on a device over the user's own ssh and serve it
there with `edgekit serve`.

  deploy(DeployOptions(path), target): check the device's Python has edgekit[serve] (else
  EdgekitError with the pip line) and make the folder  →  copy model/ (the variant, report.json),
  launcher.py, serve.json and the systemd unit (one tar stream over ssh)  →  `python3 launcher.py
  start FOLDER` starts `edgekit serve` detached, waits for /v2/health/ready on the device, replies
  with the pid and URL.
  status(target, name) · stop(target, name) · forward(target, name, local_port)

The folder on the device is ~/.edgekit/deploy/NAME (remote_dir changes the parent); it also holds
serve.pid, serve.log and edgekit-NAME.service (a systemd unit, written, never installed). The
target is an edgekit.ssh.Target (edgekit.ssh.parse_target).
"""

from __future__ import annotations

import json
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from edgekit import textsafe
from edgekit.errors import EdgekitError
from edgekit.ssh import Target

REMOTE_DIR = "~/.edgekit/deploy"


@dataclass(frozen=True)
class DeployOptions:
    """`edgekit deploy`'s options (see its --help). The serve settings left None are serve's
    defaults."""

    path: Path | None  # the optimize output folder
    name: str | None = None  # the deployment's and the model's name; None: the folder's name
    variant: str | None = None  # None: the recommended one
    host: str = "127.0.0.1"  # the address on the device
    port: int = 8000
    api_key_file: Path | None = None  # copied to the device
    threads: int | None = None
    max_batch: int | None = None
    batch_timeout_ms: float | None = None
    shadow: str | None = None  # also copied
    shadow_rate: float | None = None
    remote_dir: str = REMOTE_DIR
    systemd_unit: Path | None = None  # also save the unit here

    @property
    def deployment(self) -> str:
        """The deployment's name, checked."""
        from edgekit.serve.server import check_name

        if self.name:
            return check_name(self.name, "The deployment name")
        if self.path is None:
            raise EdgekitError("Say which deployment: give PATH or --name.")
        return check_name(
            Path(self.path).resolve().name.removesuffix(".edgekit"), "The deployment name"
        )


@dataclass(frozen=True)
class Deployed:
    name: str
    variant: str
    folder: str  # on the device
    pid: int
    url: str  # on the device
    unit_name: str  # edgekit-NAME.service, in the folder


def remote_folder(remote_dir: str, name: str) -> str:
    return f"{remote_dir.rstrip('/')}/{name}"


def deploy(options: DeployOptions, target: Target, say: Callable[[str], None] = print) -> Deployed:
    """Copy the variant to the device and start serving it there; `say` hears the progress."""
    from edgekit.deploy import remote
    from edgekit.deploy.systemd import systemd_unit
    from edgekit.runtimes import runtime_for
    from edgekit.serve import server

    name, path = options.deployment, options.path
    if path is None:
        raise EdgekitError("Give the optimize output folder to deploy (PATH).")
    path = Path(path)
    if not path.is_dir():
        raise EdgekitError(
            f"{path}: not an optimize output folder. `edgekit deploy` copies the folder "
            "that `edgekit optimize` wrote (MODEL.edgekit/)."
        )
    _, (choice,) = server.choose(path, options.variant, name)
    variant = choice.variant["name"]
    server.check_name(variant, "The report's variant name", "--variant")  # goes into the unit
    files = [(path / "report.json", "model/report.json")]
    files += remote.variant_files(path, choice.variant)
    # the device needs each served variant's runtime
    runtimes = (choice.variant.get("runtime") or runtime_for(choice.path),)
    serve_args = ["model", "--variant", variant, "--name", name,
                  "--host", options.host, "--port", str(options.port)]  # fmt: skip
    if options.shadow:
        _, (shadow,) = server.choose(path, options.shadow)
        files += remote.variant_files(path, shadow.variant)
        runtimes += (shadow.variant.get("runtime") or runtime_for(shadow.path),)
        serve_args += ["--shadow", options.shadow]
    for flag, value in (
        ("--threads", options.threads),
        ("--max-batch", options.max_batch),
        ("--batch-timeout-ms", options.batch_timeout_ms),
        ("--shadow-rate", options.shadow_rate),
    ):
        if value is not None:
            serve_args += [flag, str(value)]
    if options.api_key_file:
        if not Path(options.api_key_file).is_file():
            raise EdgekitError(f"--api-key-file {options.api_key_file}: no such file.")
        files.append((Path(options.api_key_file), remote.API_KEY))
        serve_args += ["--api-key-file", remote.API_KEY]
    say(f"checking {target.spec}")
    checked = remote.check_device(target, remote_folder(options.remote_dir, name), runtimes)
    folder = checked["folder"]
    unit = systemd_unit(name, checked["python"], folder, serve_args, target.user)
    unit_name = f"edgekit-{name}.service"
    settings = {"args": serve_args, "host": options.host, "port": options.port}
    with tempfile.TemporaryDirectory(prefix="edgekit-deploy-") as tmp:
        tar_path = Path(tmp) / "bundle.tar"
        remote.pack(files, {"serve.json": json.dumps(settings), unit_name: unit}, tar_path)
        say(f"copying {tar_path.stat().st_size / 1e6:.1f} MB to {folder}")
        remote.copy(target, tar_path, folder)
    if options.systemd_unit:
        from edgekit.fsutil import atomic_write_text

        atomic_write_text(options.systemd_unit, unit)
    say(f"starting {textsafe.plain(variant)} as {name}")
    reply = remote.run_launcher(target, "start", folder, timeout=180)
    if "error" in reply:
        raise EdgekitError(
            f"{target.spec}: {reply['error']}. The server's log ({folder}/serve.log) ends:\n"
            f"{textsafe.plain(reply.get('log', ''))}"
        )
    return Deployed(name, variant, folder, reply["pid"], reply["url"], unit_name)


def status(target: Target, name: str, remote_dir: str = REMOTE_DIR) -> dict:
    """The launcher's reply: {"running": False}, or running, pid, url (on the device), metrics
    (sample: value), and metrics_error when they could not be read."""
    from edgekit.deploy import remote

    return remote.run_launcher(target, "status", remote_folder(remote_dir, name))


def stop(target: Target, name: str, remote_dir: str = REMOTE_DIR) -> bool:
    """Stop the deployment's server; whether it was running."""
    from edgekit.deploy import remote

    reply = remote.run_launcher(target, "stop", remote_folder(remote_dir, name), timeout=90)
    return bool(reply.get("was_running"))


def forward(
    target: Target,
    name: str,
    local_port: int,
    remote_dir: str = REMOTE_DIR,
    say: Callable[[str], None] = print,
) -> int:
    """An SSH tunnel from 127.0.0.1:local_port here to the deployment's port on the device,
    until interrupted (KeyboardInterrupt) or the tunnel ends."""
    from edgekit.deploy import remote

    reply = status(target, name, remote_dir)
    if not reply.get("running"):
        raise EdgekitError(f"{name} is not running on {target.spec}; deploy it first.")
    port = int(reply["url"].rsplit(":", 1)[1])
    return remote.forward(target, port, local_port, say)
