"""Serve a model over HTTP with the Open Inference Protocol (KServe v2 / Triton HTTP).

PATH is an optimize output folder (its recommended variant is served; --variant NAME picks another,
--variant all serves each under its own name) or one .onnx file. Applications call it with the
standard clients (tritonclient.http, KServe's), JSON or binary tensors. GET /metrics gives
Prometheus metrics; GET /edgekit/monitor the live-drift and input-range summary.
Needs the serve extra on the device: python3 -m pip install 'edgekit[serve]' (no torch).

A language model (an optimize output folder of one, or one LM variant folder with its
genai_config.json) is served with the OpenAI API instead: GET /v1/models, POST /v1/completions
and /v1/chat/completions (stream: true for server-sent events), as llama.cpp's server and Ollama
speak it; it also needs onnxruntime-genai on the device.

examples:
  edgekit serve digits_cnn.edgekit                       # http://127.0.0.1:8000
  edgekit serve digits_cnn.edgekit --variant all --port 9000
  edgekit serve model.onnx --host 0.0.0.0 --api-key-file ~/.edgekit-key
  edgekit serve digits_cnn.edgekit --shadow fp32 --shadow-rate 0.05 --access-log serve.jsonl
  edgekit serve tiny-lm.edgekit                          # http://127.0.0.1:8000/v1 (OpenAI API)
"""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path

from edgekit.serve.options import MAX_BATCH, ServeOptions


def max_batch(args) -> int:
    return MAX_BATCH if args.max_batch is None else args.max_batch


HELP = "serve a variant over HTTP (Open Inference Protocol; OpenAI API for language models)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "path", type=Path, metavar="PATH", help="optimize output folder, .onnx or LM folder"
    )
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


def _export(args) -> int:
    from edgekit import textsafe
    from edgekit.serve import repository, server

    _, choices = server.choose(args.path, args.variant, args.name)
    written, skipped = repository.export(
        choices,
        args.export_repository,
        max_batch=max_batch(args),
        batch_timeout_ms=args.batch_timeout_ms,
        instances=args.instances,
        threads=args.threads,
        force=args.force,
    )
    for folder in written:
        model = next(f.name for f in (folder / "1").iterdir() if f.suffix in (".onnx", ".xml"))
        print(f"wrote {textsafe.plain(folder)}/config.pbtxt and 1/{model}")
    for why in skipped:
        print(f"skipped {why}")
    print(
        f"Serve it with Triton: tritonserver --model-repository {textsafe.plain(args.export_repository)}"
    )
    return 0


def run(args: argparse.Namespace) -> int:
    options = ServeOptions(
        **{f.name: getattr(args, f.name) for f in dataclasses.fields(ServeOptions)}
    )
    if args.export_repository:
        return _export(args)
    from edgekit import serve, textsafe

    def ready(names: list[str], url: str) -> None:
        print(
            f"edgekit: serving {', '.join(textsafe.plain(n) for n in names)} at {url}", flush=True
        )

    serve.run(options, on_ready=ready)
    print("edgekit: stopped", flush=True)
    return 0
