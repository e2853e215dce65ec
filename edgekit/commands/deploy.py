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
import json
import shlex
import signal
import tempfile
from pathlib import Path

from edgekit.errors import EdgekitError

HELP = "copy a variant to a device over ssh and serve it there"


def add_arguments(parser: argparse.ArgumentParser) -> None:
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
        default="~/.edgekit/deploy",
        metavar="DIR",
        help="parent of the deployment folder on the device (default ~/.edgekit/deploy)",
    )
    parser.add_argument("--remote-python", default="python3", metavar="PATH")
    parser.add_argument(
        "--ssh-option", action="append", default=[], metavar="KEY=VALUE", help="ssh -o, repeatable"
    )
    parser.add_argument("--systemd-unit", type=Path, metavar="FILE", help="also save the unit here")


def _interrupt(*_):
    raise KeyboardInterrupt


def _name(args) -> str:
    from edgekit.serve.deploy import check_name

    if args.name:
        return check_name(args.name)
    if args.path is None:
        raise EdgekitError("Say which deployment: give PATH or --name.")
    stem = args.path.resolve().name.removesuffix(".edgekit")
    return check_name(stem)


def run(args: argparse.Namespace) -> int:
    from edgekit import textsafe
    from edgekit.benchmark.remote import parse_target
    from edgekit.serve import deploy

    target = parse_target(args.target, args.remote_python, args.ssh_option)
    name = _name(args)
    folder = deploy.remote_folder(args.remote_dir, name)
    if args.stop:
        reply = deploy.run_launcher(target, "stop", folder, timeout=90)
        state = "stopped" if reply.get("was_running") else "was not running"
        print(f"{name} on {target.spec}: {state}")
        return 0
    if args.status:
        reply = deploy.run_launcher(target, "status", folder)
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
        reply = deploy.run_launcher(target, "status", folder)
        if not reply.get("running"):
            raise EdgekitError(f"{name} is not running on {target.spec}; deploy it first.")
        port = int(reply["url"].rsplit(":", 1)[1])
        signal.signal(signal.SIGTERM, _interrupt)  # the tunnel's ssh is ended either way
        with contextlib.suppress(KeyboardInterrupt):
            deploy.forward(target, port, args.forward, lambda msg: print(msg, flush=True))
        return 0
    return _deploy(args, target, name, folder)


def _deploy(args, target, name: str, folder: str) -> int:
    from edgekit import textsafe
    from edgekit.serve import deploy, server

    if args.path is None:
        raise EdgekitError("Give the optimize output folder to deploy (PATH).")
    if not args.path.is_dir():
        raise EdgekitError(
            f"{args.path}: not an optimize output folder. `edgekit deploy` copies the folder "
            "that `edgekit optimize` wrote (MODEL.edgekit/)."
        )
    _, (choice,) = server.choose(args.path, args.variant, name)
    # it goes into the systemd unit's command line
    server.check_name(choice.variant["name"], "The report's variant name", "--variant")
    files = [(args.path / "report.json", "model/report.json")]
    files += deploy.variant_files(args.path, choice.variant)
    serve_args = ["model", "--variant", choice.variant["name"], "--name", name,
                  "--host", args.host, "--port", str(args.port)]  # fmt: skip
    if args.shadow:
        _, (shadow,) = server.choose(args.path, args.shadow)
        files += deploy.variant_files(args.path, shadow.variant)
        serve_args += ["--shadow", args.shadow]
    for flag, value in (
        ("--threads", args.threads),
        ("--max-batch", args.max_batch),
        ("--batch-timeout-ms", args.batch_timeout_ms),
        ("--shadow-rate", args.shadow_rate),
    ):
        if value is not None:
            serve_args += [flag, str(value)]
    if args.api_key_file:
        if not args.api_key_file.is_file():
            raise EdgekitError(f"--api-key-file {args.api_key_file}: no such file.")
        files.append((args.api_key_file, deploy.API_KEY))
        serve_args += ["--api-key-file", deploy.API_KEY]
    print(f"checking {target.spec}", flush=True)
    checked = deploy.check_device(target, folder)
    folder = checked["folder"]
    unit = deploy.systemd_unit(name, checked["python"], folder, serve_args, target.user)
    unit_name = f"edgekit-{name}.service"
    settings = {"args": serve_args, "host": args.host, "port": args.port}
    with tempfile.TemporaryDirectory(prefix="edgekit-deploy-") as tmp:
        tar_path = Path(tmp) / "bundle.tar"
        deploy.pack(files, {"serve.json": json.dumps(settings), unit_name: unit}, tar_path)
        print(f"copying {tar_path.stat().st_size / 1e6:.1f} MB to {folder}", flush=True)
        deploy.copy(target, tar_path, folder)
    if args.systemd_unit:
        from edgekit.fsutil import atomic_write_text

        atomic_write_text(args.systemd_unit, unit)
    print(f"starting {textsafe.plain(choice.variant['name'])} as {name}", flush=True)
    reply = deploy.run_launcher(target, "start", folder, timeout=180)
    if "error" in reply:
        raise EdgekitError(
            f"{target.spec}: {reply['error']}. The server's log ({folder}/serve.log) ends:\n"
            f"{textsafe.plain(reply.get('log', ''))}"
        )
    print(f"serving {name} on {target.spec}: pid {reply['pid']}, log {folder}/serve.log")
    if args.host in ("127.0.0.1", "localhost", "::1"):
        print(f"URL on the device: {reply['url']}")
        again = shlex.join(["edgekit", "deploy", "--forward", str(args.port),
                            "--target", args.target, "--name", name])  # fmt: skip
        print(f"From this machine: {again}   (an SSH tunnel; then http://127.0.0.1:{args.port})")
    else:
        print(f"URL: http://{target.host}:{args.port}")
    print(
        f"To start it at boot: sudo cp {folder}/{unit_name} /etc/systemd/system/ && "
        f"sudo systemctl enable --now {unit_name}  (stop this one first: edgekit deploy --stop)"
    )
    return 0
