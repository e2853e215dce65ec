"""Deploy a variant to a device over ssh and serve it there with `edgekit serve`.

Copies the chosen variant (the recommended one unless --variant), its report and a small launcher
to ~/.edgekit/deploy/NAME on the device, checks that the device has what `edgekit serve` needs
(python3 -m pip install 'edgekit[serve]'; no torch), starts the server detached (serve.pid and
serve.log in that folder), waits until /v2/health/ready answers there, and prints the URL. It binds
127.0.0.1 on the device unless --host says otherwise: reach it through `--forward PORT` (an SSH
tunnel) or with --host 0.0.0.0 and --api-key-file. The folder also gets edgekit-NAME.service, a
systemd unit to survive reboots (printed; installed only by you).

examples:
  edgekit deploy digits_cnn.edgekit --target ssh://pi@raspberrypi.local
  edgekit deploy --forward 8000 --target ssh://pi@raspberrypi.local --name digits_cnn
  edgekit deploy --status --target ssh://pi@raspberrypi.local --name digits_cnn
  edgekit deploy --stop --target ssh://pi@raspberrypi.local --name digits_cnn
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import shlex
import signal
from pathlib import Path

HELP = "copy a variant to a device over ssh and serve it there"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from edgekit.deploy import REMOTE_DIR

    parser.add_argument("path", type=Path, nargs="?", metavar="PATH", help="optimize output folder")
    parser.add_argument("--target", required=True, metavar="ssh://[USER@]HOST[:PORT]")
    action = parser.add_mutually_exclusive_group()
    action.add_argument("--status", action="store_true", help="is it running; its last metrics")
    action.add_argument("--stop", action="store_true", help="stop the server on the device")
    action.add_argument(
        "--forward", type=int, metavar="LOCALPORT", help="SSH tunnel from this machine's port"
    )
    parser.add_argument("--name", help="deployment and model name (default: PATH's name)")
    parser.add_argument("--variant", metavar="NAME", help="variant (default: the recommended)")
    parser.add_argument("--host", default="127.0.0.1", help="address on the device (127.0.0.1)")
    parser.add_argument("--port", type=int, default=8000, help="port on the device (8000)")
    parser.add_argument("--api-key-file", type=Path, metavar="FILE", help="copied to the device")
    parser.add_argument("--threads", type=int, metavar="N")
    parser.add_argument("--max-batch", type=int, metavar="N")
    parser.add_argument("--batch-timeout-ms", type=float, metavar="T")
    parser.add_argument("--shadow", metavar="VARIANT", help="also copied; see `edgekit serve`")
    parser.add_argument("--shadow-rate", type=float, metavar="R")
    parser.add_argument(
        "--remote-dir",
        default=REMOTE_DIR,
        metavar="DIR",
        help=f"parent of the deployment folder on the device (default {REMOTE_DIR})",
    )
    parser.add_argument("--remote-python", default="python3", metavar="PATH")
    parser.add_argument(
        "--ssh-option", action="append", default=[], metavar="KEY=VALUE", help="ssh -o, repeatable"
    )
    parser.add_argument("--systemd-unit", type=Path, metavar="FILE", help="also save the unit here")


def _interrupt(*_):
    raise KeyboardInterrupt


def run(args: argparse.Namespace) -> int:
    from edgekit import deploy, ssh, textsafe

    target = ssh.parse_target(args.target, args.remote_python, args.ssh_option)
    options = deploy.DeployOptions(
        **{f.name: getattr(args, f.name) for f in dataclasses.fields(deploy.DeployOptions)}
    )
    name = options.deployment
    if args.stop:
        state = "stopped" if deploy.stop(target, name, args.remote_dir) else "was not running"
        print(f"{name} on {target.spec}: {state}")
        return 0
    if args.status:
        reply = deploy.status(target, name, args.remote_dir)
        if not reply.get("running"):
            print(f"{name} on {target.spec}: not running")
            return 1
        print(f"{name} on {target.spec}: running, pid {reply['pid']}, {reply['url']} on the device")
        for sample, value in sorted(reply.get("metrics", {}).items()):
            print(f"  {textsafe.plain(sample)} {value:g}")
        if reply.get("metrics_error"):
            print(f"  (metrics unreadable: {textsafe.plain(reply['metrics_error'])})")
        return 0
    if args.forward is not None:
        signal.signal(signal.SIGTERM, _interrupt)  # the tunnel's ssh is ended either way
        with contextlib.suppress(KeyboardInterrupt):
            deploy.forward(target, name, args.forward, args.remote_dir, _say)
        return 0
    done = deploy.deploy(options, target, _say)
    folder = done.folder
    print(f"serving {name} on {target.spec}: pid {done.pid}, log {folder}/serve.log")
    if args.host in ("127.0.0.1", "localhost", "::1"):
        print(f"URL on the device: {done.url}")
        again = shlex.join(["edgekit", "deploy", "--forward", str(args.port),
                            "--target", args.target, "--name", name])  # fmt: skip
        print(f"From this machine: {again}   (an SSH tunnel; then http://127.0.0.1:{args.port})")
    else:
        print(f"URL: http://{target.host}:{args.port}")
    print(
        f"To start it at boot: sudo cp {folder}/{done.unit_name} /etc/systemd/system/ && "
        f"sudo systemctl enable --now {done.unit_name}  (stop this one first: edgekit deploy --stop)"
    )
    return 0


def _say(message: str) -> None:
    print(message, flush=True)
