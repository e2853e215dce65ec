"""Serve a model over HTTP with the Open Inference Protocol (KServe v2 / Triton HTTP).

PATH is an optimize output folder (its recommended variant is served; --variant NAME picks another,
--variant all serves each under its own name) or one .onnx file. Applications call it with the
standard clients (tritonclient.http, KServe's), JSON or binary tensors. GET /metrics gives
Prometheus metrics; GET /edgekit/monitor the live-drift and input-range summary.
Needs the serve extra on the device: python3 -m pip install 'edgekit[serve]' (no torch).

examples:
  edgekit serve digits_cnn.edgekit                       # http://127.0.0.1:8000
  edgekit serve digits_cnn.edgekit --variant all --port 9000
  edgekit serve model.onnx --host 0.0.0.0 --api-key-file ~/.edgekit-key
  edgekit serve digits_cnn.edgekit --shadow fp32 --shadow-rate 0.05 --access-log serve.jsonl
"""

from __future__ import annotations

import argparse
import ipaddress
import os
import sys
from pathlib import Path

from edgekit.errors import EdgekitError

# Requests already waiting run as one batch (no waiting for more: --batch-timeout-ms 0). Measured
# with tools/bench_serve.py on 2 cores: digits_cnn 1.17x the requests/s at concurrency 4, 1.29x at
# 16, the same at 1; a ResNet-18 shape within noise either way.
MAX_BATCH = 16


def max_batch(args) -> int:
    return MAX_BATCH if args.max_batch is None else args.max_batch


HELP = "serve a variant over HTTP (Open Inference Protocol, Prometheus metrics)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("path", type=Path, metavar="PATH", help="optimize output folder or .onnx")
    parser.add_argument("--variant", metavar="NAME", help="variant to serve, or `all`")
    parser.add_argument("--name", help="model name in URLs (default: the variant's name)")
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=8000, help="port (default 8000; 0: any free)")
    parser.add_argument(
        "--api-key-file",
        type=Path,
        metavar="FILE",
        help="require `Authorization: Bearer <key>` with the key in FILE (health checks exempt)",
    )
    parser.add_argument(
        "--threads", type=int, metavar="N", help="onnxruntime intra-op threads (default: cores)"
    )
    parser.add_argument(
        "--instances", type=int, default=1, metavar="N", help="runs of a model at once (default 1)"
    )
    parser.add_argument(
        "--max-batch",
        type=int,
        metavar="N",
        help=f"run requests that are waiting together, up to N rows (default {MAX_BATCH}; "
        "1: no batching)",
    )
    parser.add_argument(
        "--batch-timeout-ms",
        type=float,
        default=0.0,
        metavar="T",
        help="how long a batch waits for more requests (default 0: takes what is queued)",
    )
    parser.add_argument("--max-body-mb", type=float, default=64.0, metavar="MB")
    parser.add_argument(
        "--shadow", metavar="VARIANT", help="run a sample of requests through this variant too"
    )
    parser.add_argument("--shadow-rate", type=float, default=0.05, metavar="R")
    parser.add_argument(
        "--max-drift", metavar="BUDGET", help="live drift budget (default: the report's)"
    )
    parser.add_argument(
        "--access-log", metavar="FILE", help="one JSON line per request (- : stdout)"
    )
    parser.add_argument(
        "--export-repository",
        type=Path,
        metavar="OUT",
        help="instead of serving, write a Triton/KServe model repository for the same models "
        "and settings (OUT/NAME/config.pbtxt, OUT/NAME/1/model.onnx)",
    )
    parser.add_argument(
        "--force",
        action="store_true",
        help="with --export-repository: replace OUT/NAME/config.pbtxt and 1/model.onnx if present",
    )
    parser.add_argument(
        "--drain-timeout",
        type=float,
        default=30.0,
        metavar="S",
        help="on SIGTERM, how long in-flight requests may take to finish (default 30)",
    )
    parser.add_argument(
        "--max-connections",
        type=int,
        metavar="N",
        help="connections served at once; one more gets 503 (default 1000, or less to stay "
        "under the file limit, ulimit -n)",
    )
    parser.add_argument(
        "--client-timeout",
        type=float,
        default=30.0,
        metavar="S",
        help="a request's headers must arrive within S seconds, its body may pause at most S "
        "seconds; else 408 (default 30)",
    )


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


MAX_KEY_BYTES = 4096


def _read_key(path: Path) -> str:
    """The key: at most MAX_KEY_BYTES read (the file may be /dev/zero), printable ASCII (HTTP
    headers carry ASCII: any other key could never match)."""
    try:
        with open(path, "rb") as handle:
            raw = handle.read(MAX_KEY_BYTES + 1)
    except OSError as exc:
        raise EdgekitError(f"Cannot read the API key file {path}: {exc.strerror or exc}.") from None
    key = raw.strip()
    if len(raw) > MAX_KEY_BYTES or not key or not all(0x21 <= b < 0x7F for b in key):
        raise EdgekitError(
            f"The API key file {path} must hold one key of printable ASCII without spaces, at "
            f"most {MAX_KEY_BYTES} bytes, e.g. from "
            "`python3 -c 'import secrets; print(secrets.token_urlsafe(32))'`."
        )
    return key.decode("ascii")


# --threads at most this machine's CPUs: more intra-op threads than CPUs only contend (8 threads on
# 2 cores ran a model 6x slower) and each costs a stack; an unbounded number can exhaust the
# device's memory or thread limit.
MAX_THREADS = os.cpu_count() or 1


def _check_args(args) -> None:
    for flag, value, low, high in (
        ("--instances", args.instances, 1, 64),
        ("--max-batch", max_batch(args), 1, 2**20),
        ("--threads", args.threads if args.threads is not None else 1, 1, MAX_THREADS),
        ("--port", args.port, 0, 65535),
        ("--max-connections", args.max_connections or 1, 1, 10**6),
    ):
        if not low <= value <= high:
            raise EdgekitError(f"{flag} must be from {low} to {high}; got {value}.")
    for flag, value, low, high in (
        ("--batch-timeout-ms", args.batch_timeout_ms, 0, 60_000),
        ("--max-body-mb", args.max_body_mb, 1e-3, 100_000),
        ("--drain-timeout", args.drain_timeout, 0, 24 * 3600),
        ("--client-timeout", args.client_timeout, 0.1, 3600),
    ):
        # `not low <= value` is also true for nan
        if not low <= value <= high:
            raise EdgekitError(f"{flag} must be a number from {low:g} to {high:g}; got {value}.")
    if not 0 < args.shadow_rate <= 1:
        raise EdgekitError(
            f"--shadow-rate is a share of requests in (0, 1]; got {args.shadow_rate}."
        )


def _export(args) -> int:
    from edgekit import textsafe
    from edgekit.serve import repository, server

    _, choices = server.choose(args.path, args.variant, args.name)
    written = repository.export(
        choices,
        args.export_repository,
        max_batch=max_batch(args),
        batch_timeout_ms=args.batch_timeout_ms,
        instances=args.instances,
        threads=args.threads,
        force=args.force,
    )
    for folder in written:
        print(f"wrote {textsafe.plain(folder)}/config.pbtxt and 1/model.onnx")
    print(
        f"Serve it with Triton: tritonserver --model-repository {textsafe.plain(args.export_repository)}"
    )
    return 0


def run(args: argparse.Namespace) -> int:
    from edgekit.serve import server

    _check_args(args)
    if args.export_repository:
        return _export(args)
    server.check_extra()
    from edgekit import textsafe
    from edgekit.benchmark import device
    from edgekit.recommend import parse_budget
    from edgekit.serve.app import Served, State, build_app, open_access_log
    from edgekit.serve.metrics import Metrics
    from edgekit.serve.model import ServedModel
    from edgekit.serve.monitor import InputRange, Shadow

    api_key = _read_key(args.api_key_file) if args.api_key_file else None
    if not _is_loopback(args.host) and api_key is None:
        print(
            f"edgekit: warning: serving on {args.host} without --api-key-file: anyone who can "
            "reach this port can call the model.",
            file=sys.stderr,
        )
    report, choices = server.choose(args.path, args.variant, args.name)
    shadow_file = None
    if args.shadow:
        if report is None:
            shadow_file = Path(args.shadow)
            if not shadow_file.is_file():
                raise EdgekitError(
                    f"--shadow {args.shadow}: serving one .onnx file, the shadow must be an "
                    ".onnx file too (or serve the optimize output folder and name a variant)."
                )
        else:
            _, (shadow_choice,) = server.choose(args.path, args.shadow)
            shadow_file = shadow_choice.path
    budget_text = args.max_drift or (report or {}).get("budget")
    budget = parse_budget(budget_text) if budget_text else None
    threads = args.threads or device.physical_cores()
    max_connections = server.connection_limit(args.max_connections)
    access_log = open_access_log(args.access_log) if args.access_log else None
    sock = server.bind(args.host, args.port)
    metrics = Metrics()
    models = {}
    for choice in choices:
        if choice.name in models:
            raise EdgekitError(f"Two variants would be served as {choice.name!r}.")
        model = ServedModel(
            choice.name,
            choice.path,
            threads=threads,
            instances=args.instances,
            max_batch=max_batch(args),
            batch_timeout_s=args.batch_timeout_ms / 1e3,
        )
        if args.max_batch and args.max_batch > 1 and model.unbatched:
            print(
                f"edgekit: warning: {textsafe.plain(choice.name)}: requests are not batched: "
                f"{model.unbatched}.",
                file=sys.stderr,
            )
        row = choice.variant or {}
        metrics.model_info.labels(choice.name, choice.path.name, row.get("sha256") or "").set(1)
        shadow = None
        if shadow_file is not None:
            shadow = Shadow(
                choice.name, args.shadow, shadow_file, args.shadow_rate, budget, metrics
            )
        ranges = InputRange(choice.name, (report or {}).get("inputs"), metrics)
        models[choice.name] = Served(model, ranges, metrics.for_model(choice.name), shadow)
    state = State(
        models=models,
        metrics=metrics,
        max_body=int(args.max_body_mb * 2**20),
        api_key=api_key,
        access_log=access_log,
    )
    host, port = sock.getsockname()[:2]
    shown = f"[{host}]" if ":" in host else host
    names = ", ".join(textsafe.plain(n) for n in models)

    def ready():
        print(f"edgekit: serving {names} at http://{shown}:{port}", flush=True)

    try:
        server.serve(
            build_app(state, on_ready=ready),
            sock,
            args.drain_timeout,
            max_connections,
            args.client_timeout,
        )
    finally:
        for entry in models.values():
            entry.model.stop()
            if entry.shadow:
                entry.shadow.stop()
    print("edgekit: stopped", flush=True)
    return 0
