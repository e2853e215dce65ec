"""Commands on a device over SSH, for `edgekit bench --target` and `edgekit deploy`.

The system's OpenSSH client does the talking, so keys, the agent, ~/.ssh/config, ProxyJump and
known_hosts work as everywhere else. edgekit adds BatchMode=yes (never prompt: a fleet runs
unattended) and time limits, and never touches host key checking.

Every remote command is a list of arguments, each shlex-quoted (`Target.ssh`), because ssh hands
the remote shell one string.
"""

from __future__ import annotations

import dataclasses
import os
import re
import shlex
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from edgekit.errors import EdgekitError

ENV_OPTIONS = "EDGEKIT_SSH_OPTIONS"  # extra ssh arguments, shell-style, e.g. "-i ~/.ssh/pi -F cfg"
# Ours come after the user's: for ssh the first value given for an option wins.
SSH_DEFAULTS = (
    "-o", "BatchMode=yes", "-o", "ConnectTimeout=15",
    "-o", "ServerAliveInterval=10", "-o", "ServerAliveCountMax=3",
)  # fmt: skip
QUICK_S = 60  # limit for each short remote command (mktemp, probe, cleanup, the launcher)
NAME = re.compile(r"(?=.*[A-Za-z0-9])[A-Za-z0-9_.][A-Za-z0-9_.-]*")  # never "." or ".."


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
