"""Runs on the device (stdlib only; copied there by `edgekit deploy`): starts `edgekit serve`
detached, stops it, says how it is doing.

    python3 launcher.py start|stop|status FOLDER

FOLDER (by default ~/.edgekit/deploy/NAME) holds model/ (the variant and its report), serve.json
(the serve arguments, the port), and what this script writes: serve.pid, serve.log. Every reply is
one JSON line on stdout.
"""

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

READY_S = 120  # session creation on a slow board
STOP_S = 40  # the server drains for up to 30 s


def _alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    cmdline = Path(f"/proc/{pid}/cmdline")
    if cmdline.exists():  # a recycled pid is not ours
        args = cmdline.read_bytes().split(b"\0")
        return b"edgekit.cli" in args and b"serve" in args
    return True


def _pid(folder):
    try:
        pid = int((folder / "serve.pid").read_text())
    except (OSError, ValueError):
        return None
    return pid if _alive(pid) else None


def _get(url, key=None, timeout=5, headers=None):
    """The response's text; `headers`, a dict, receives its headers (lower-case names)."""
    request = urllib.request.Request(url)
    if key:
        request.add_header("Authorization", f"Bearer {key}")
    with urllib.request.urlopen(request, timeout=timeout) as response:
        if headers is not None:
            headers.update((k.lower(), v) for k, v in response.headers.items())
        return response.read().decode()


def _local_url(settings):
    host = settings["host"]
    if host in ("0.0.0.0", "::", ""):
        host = "127.0.0.1"
    if ":" in host:
        host = f"[{host}]"
    return f"http://{host}:{settings['port']}"


def stop(folder):
    pid = _pid(folder)
    if pid is None:
        (folder / "serve.pid").unlink(missing_ok=True)
        return {"was_running": False, "stopped": True}
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + STOP_S
    while _alive(pid) and time.monotonic() < deadline:
        time.sleep(0.1)
    if _alive(pid):
        os.kill(pid, signal.SIGKILL)
    (folder / "serve.pid").unlink(missing_ok=True)
    return {"was_running": True, "stopped": True, "pid": pid}


def start(folder):
    stop(folder)
    settings = json.loads((folder / "serve.json").read_text())
    argv = [sys.executable, "-m", "edgekit.cli", "serve", *settings["args"]]
    with open(folder / "serve.log", "ab") as log:
        proc = subprocess.Popen(
            argv,
            cwd=folder,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=log,
            start_new_session=True,  # survives the ssh session
        )
    (folder / "serve.pid").write_text(str(proc.pid))
    url = _local_url(settings)
    deadline = time.monotonic() + READY_S
    other = None  # the pid of another server that answered on the port
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            tail = (folder / "serve.log").read_text(errors="replace")[-2000:]
            (folder / "serve.pid").unlink(missing_ok=True)
            return {"error": f"edgekit serve exited with code {proc.returncode}", "log": tail}
        headers = {}
        try:
            _get(url + "/v2/health/ready", timeout=2, headers=headers)
        except OSError:
            time.sleep(0.2)
            continue
        # ready only when the server that answers is the one started here
        if headers.get("edgekit-pid") == str(proc.pid):
            return {"pid": proc.pid, "url": url, "folder": str(folder), "python": sys.executable}
        other = headers.get("edgekit-pid", "not edgekit")
        time.sleep(0.2)
    proc.terminate()
    (folder / "serve.pid").unlink(missing_ok=True)
    if other is not None:
        return {"error": f"another server (pid {other}) answers on {url}; this one never did"}
    return {"error": f"edgekit serve did not answer {url}/v2/health/ready in {READY_S} s"}


def status(folder):
    pid = _pid(folder)
    if pid is None:
        return {"running": False}
    settings = json.loads((folder / "serve.json").read_text())
    key_file = folder / "api-key"
    key = key_file.read_text().strip() if key_file.exists() else None
    url = _local_url(settings)
    reply = {"running": True, "pid": pid, "url": url, "metrics": {}}
    try:
        text = _get(url + "/metrics", key)
    except OSError as exc:
        reply["metrics_error"] = str(exc)
        return reply
    wanted = (
        "edgekit_requests_total",
        "edgekit_request_duration_seconds_sum",
        "edgekit_request_duration_seconds_count",
        "edgekit_inflight_requests",
        "process_resident_memory_bytes",
        "process_cpu_seconds_total",
        "edgekit_device_temperature_celsius",
        "edgekit_input_outside_calibration_requests_total",
        "edgekit_shadow_budget_breached",
    )
    for line in text.splitlines():
        if line.startswith(wanted):
            sample, _, value = line.rpartition(" ")
            reply["metrics"][sample] = float(value)
    return reply


def main():
    command, folder = sys.argv[1], Path(sys.argv[2]).expanduser().resolve()
    result = {"start": start, "stop": stop, "status": status}[command](folder)
    print(json.dumps(result))
    return 0  # the reply says what failed: ssh passes on stdout only when the command exits 0


if __name__ == "__main__":
    sys.exit(main())
