"""What `edgekit serve` is asked to do, checked: ServeOptions (the command's flags, one field
each). Light to import: the command reads MAX_BATCH for its help."""

from __future__ import annotations

import ipaddress
import os
from dataclasses import dataclass
from pathlib import Path

from edgekit.errors import EdgekitError

# Requests already waiting run as one batch (no waiting for more: --batch-timeout-ms 0). Measured
# with tools/bench_serve.py on 2 cores: digits_cnn 1.17x the requests/s at concurrency 4, 1.29x at
# 16, the same at 1; a ResNet-18 shape within noise either way.
MAX_BATCH = 16
# --threads at most this machine's CPUs: more intra-op threads than CPUs only contend (8 threads on
# 2 cores ran a model 6x slower) and each costs a stack; an unbounded number can exhaust the
# device's memory or thread limit.
MAX_THREADS = os.cpu_count() or 1
MAX_KEY_BYTES = 4096


@dataclass(frozen=True)
class ServeOptions:
    """`edgekit serve`'s options (see its --help); checked when made (EdgekitError)."""

    path: Path  # an optimize output folder or one .onnx file
    variant: str | None = None  # None: the recommended one; "all": each under its own name
    name: str | None = None
    host: str = "127.0.0.1"
    port: int = 8000  # 0: any free port
    api_key_file: Path | None = None
    threads: int | None = None  # None: the physical cores
    instances: int = 1
    max_batch: int | None = None  # None: MAX_BATCH (asked for: a warning if a model cannot batch)
    batch_timeout_ms: float = 0.0
    max_body_mb: float = 64.0
    shadow: str | None = None
    shadow_rate: float = 0.05
    max_drift: str | None = None  # None: the report's budget
    access_log: str | None = None  # a file, or "-" for stdout
    drain_timeout: float = 30.0
    max_connections: int | None = None  # None: edgekit.serve.server.connection_limit's default
    client_timeout: float = 30.0

    def __post_init__(self) -> None:
        for flag, value, low, high in (
            ("--instances", self.instances, 1, 64),
            ("--max-batch", self.batch_rows, 1, 2**20),
            ("--threads", self.threads if self.threads is not None else 1, 1, MAX_THREADS),
            ("--port", self.port, 0, 65535),
            ("--max-connections", self.max_connections or 1, 1, 10**6),
        ):
            if not low <= value <= high:
                raise EdgekitError(f"{flag} must be from {low} to {high}; got {value}.")
        for flag, value, low, high in (
            ("--batch-timeout-ms", self.batch_timeout_ms, 0, 60_000),
            ("--max-body-mb", self.max_body_mb, 1e-3, 100_000),
            ("--drain-timeout", self.drain_timeout, 0, 24 * 3600),
            ("--client-timeout", self.client_timeout, 0.1, 3600),
        ):
            # `not low <= value` is also true for nan
            if not low <= value <= high:
                raise EdgekitError(
                    f"{flag} must be a number from {low:g} to {high:g}; got {value}."
                )
        if not 0 < self.shadow_rate <= 1:
            raise EdgekitError(
                f"--shadow-rate is a share of requests in (0, 1]; got {self.shadow_rate}."
            )

    @property
    def batch_rows(self) -> int:
        """The most rows run together."""
        return MAX_BATCH if self.max_batch is None else self.max_batch

    @property
    def loopback(self) -> bool:
        """Whether only this machine can reach the server."""
        if self.host == "localhost":
            return True
        try:
            return ipaddress.ip_address(self.host).is_loopback
        except ValueError:
            return False

    def api_key(self) -> str | None:
        """The key in api_key_file: at most MAX_KEY_BYTES read (the file may be /dev/zero),
        printable ASCII (HTTP headers carry ASCII: any other key could never match)."""
        if self.api_key_file is None:
            return None
        path = self.api_key_file
        try:
            with open(path, "rb") as handle:
                raw = handle.read(MAX_KEY_BYTES + 1)
        except OSError as exc:
            raise EdgekitError(
                f"Cannot read the API key file {path}: {exc.strerror or exc}."
            ) from None
        key = raw.strip()
        if len(raw) > MAX_KEY_BYTES or not key or not all(0x21 <= b < 0x7F for b in key):
            raise EdgekitError(
                f"The API key file {path} must hold one key of printable ASCII without spaces, "
                f"at most {MAX_KEY_BYTES} bytes, e.g. from "
                "`python3 -c 'import secrets; print(secrets.token_urlsafe(32))'`."
            )
        return key.decode("ascii")
