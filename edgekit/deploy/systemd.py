"""The systemd unit that runs a deployment's `edgekit serve` at boot (written to the deployment
folder, never installed by edgekit)."""

from __future__ import annotations

import re


def systemd_quote(word: str, command: bool = False) -> str:
    """One word in systemd's syntax: % doubled (specifiers), $ too in a command line (variables),
    and unless plain, in double quotes with \\ and " escaped and every control character (a
    newline would end the line and start another setting) as a C escape, which systemd reads
    back."""
    word = word.replace("%", "%%")
    if command:
        word = word.replace("$", "$$")
    if re.fullmatch(r"[A-Za-z0-9_./:=@+,-]+", word):
        return word
    escaped = "".join(
        f"\\x{ord(c):02x}" if ord(c) < 0x20 or ord(c) == 0x7F else c
        for c in word.replace("\\", "\\\\").replace('"', '\\"')
    )
    return f'"{escaped}"'


def systemd_unit(name: str, python: str, folder: str, args: list[str], user: str | None) -> str:
    """A unit that runs the same `edgekit serve` at boot (written, never installed). Every field
    from outside (names, paths, arguments) goes through systemd_quote."""
    quote = systemd_quote
    exec_start = " ".join(
        quote(w, command=True) for w in [python, "-m", "edgekit.cli", "serve", *args]
    )
    lines = [
        "[Unit]",
        f"Description=edgekit serve {quote(name)}",
        "After=network-online.target",
        "Wants=network-online.target",
        "",
        "[Service]",
        *([f"User={quote(user)}"] if user else []),
        f"WorkingDirectory={quote(folder)}",
        f"ExecStart={exec_start}",
        "Restart=on-failure",
        "KillSignal=SIGTERM",
        "TimeoutStopSec=40",
        "",
        "[Install]",
        "WantedBy=multi-user.target",
        "",
    ]
    return "\n".join(lines)
