"""The server assembled from ServeOptions: what to serve read from the options (the key, the
report, the variants, the shadow, the drift budget), the models loaded, the endpoints wrapped once
in the middleware, and uvicorn run on them.

    service = Service(options)      # checks and reads; nothing loaded, nothing bound
    service.load(on_ready)          # the models on their worker threads; service.app, the ASGI app
    service.close()                 # stops the models, the shadows, the access log writer

`run(options)` does that around uvicorn; `build_app(options)` loads the Service for use in process
(`with build_app(options) as service: await service.app(scope, receive, send)`).
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path

from edgekit import textsafe
from edgekit.errors import EdgekitError
from edgekit.serve.options import ServeOptions
from edgekit.serve.server import (
    bind,
    check_extra,
    choose,
    connection_limit,
    is_lm_variant,
    serve,
)


class Service:
    """One server: made from the options (checked, nothing loaded), then `load()`ed, then
    `close()`d."""

    def __init__(self, options: ServeOptions):
        check_extra()
        self.options = options
        self.api_key = options.api_key()
        if not options.loopback and self.api_key is None:
            warn(
                f"serving on {options.host} without --api-key-file: anyone who can reach this "
                "port can call the model."
            )
        self.report, self.choices = choose(options.path, options.variant, options.name)
        self.lm = len(self.choices) == 1 and is_lm_variant(self.choices[0].path)
        if not self.lm and any(is_lm_variant(c.path) for c in self.choices):
            raise EdgekitError(
                "A language model is served alone: pick it with --variant NAME (not all)."
            )
        self.shadow_file = self._shadow_file()
        report = self.report or {}
        budget_text = options.max_drift or report.get("budget")
        self.budget = None
        if budget_text and self.lm:
            from edgekit.recommend import parse_lm_budget

            self.budget = parse_lm_budget(budget_text)
        elif budget_text:
            from edgekit.recommend import parse_budget

            self.budget = parse_budget(budget_text)
        self.state = self.log = self.app = self.engine = None

    def _shadow_file(self) -> Path | None:
        shadow = self.options.shadow
        if not shadow:
            return None
        if self.report is None:
            served_lm = is_lm_variant(self.choices[0].path)
            if not (is_lm_variant(Path(shadow)) if served_lm else Path(shadow).is_file()):
                kind = "a language model's folder" if served_lm else "an .onnx file"
                raise EdgekitError(
                    f"--shadow {shadow}: serving one model, the shadow must be {kind} too (or "
                    "serve the optimize output folder and name a variant)."
                )
            return Path(shadow)
        _, (choice,) = choose(self.options.path, shadow)
        if is_lm_variant(choice.path) != is_lm_variant(self.choices[0].path):
            raise EdgekitError(f"--shadow {shadow}: a shadow is the same kind of model.")
        return choice.path

    @property
    def names(self) -> list[str]:
        return [choice.name for choice in self.choices]

    def load(self, on_ready: Callable[[], None] | None = None):
        """The ASGI app: the endpoints wrapped in the middleware. `on_ready()` is called once
        the server accepts requests."""
        from edgekit.benchmark import device
        from edgekit.serve import middleware
        from edgekit.serve.app import Served, State, routes
        from edgekit.serve.metrics import Metrics
        from edgekit.serve.model import ServedModel
        from edgekit.serve.monitor import InputRange, Shadow

        options, report = self.options, self.report or {}
        if options.access_log:
            self.log = middleware.LogWriter(middleware.open_access_log(options.access_log))
        metrics = Metrics()
        if self.lm:
            (choice,) = self.choices
            series = {choice.name: metrics.for_model(choice.name)}
            return self._wrap(self._lm_app(metrics, on_ready), metrics, series)
        self.state = State({}, metrics, max_body=int(options.max_body_mb * 2**20))
        threads = options.threads or device.physical_cores()
        for choice in self.choices:
            model = ServedModel(
                choice.name,
                choice.path,
                threads=threads,
                instances=options.instances,
                max_batch=options.batch_rows,
                batch_timeout_s=options.batch_timeout_ms / 1e3,
            )
            ranges = InputRange(choice.name, report.get("inputs"), metrics)
            entry = Served(model, ranges, metrics.for_model(choice.name))
            self.state.models[choice.name] = entry  # from here on, close() stops it
            if self.shadow_file is not None:
                entry.shadow = Shadow(
                    choice.name, options.shadow, self.shadow_file, options.shadow_rate,
                    self.budget, metrics,
                )  # fmt: skip
            if (options.max_batch or 0) > 1 and model.unbatched:
                warn(f"{textsafe.plain(choice.name)}: requests are not batched: {model.unbatched}.")
            row = choice.variant or {}
            metrics.model_info.labels(choice.name, choice.path.name, row.get("sha256") or "").set(1)
        series = {name: entry.metrics for name, entry in self.state.models.items()}
        return self._wrap(routes(self.state, on_ready), metrics, series)

    def _lm_app(self, metrics, on_ready):
        """A language model's app: the OpenAI API on onnxruntime-genai's generation loop."""
        from edgekit.benchmark import device
        from edgekit.serve.lm_engine import LMEngine
        from edgekit.serve.metrics import LMMetrics
        from edgekit.serve.openai_api import openai_routes

        (choice,) = self.choices
        options = self.options
        threads = options.threads or device.physical_cores()

        def series(engine):
            return LMMetrics(
                metrics, choice.name, lambda: engine.kv_tokens * engine.kv_bytes_per_token
            )

        self.engine = LMEngine(choice.path, threads, series)
        metrics.model_info.labels(
            choice.name, choice.path.name, (choice.variant or {}).get("sha256") or ""
        ).set(1)
        shadow = None
        if self.shadow_file is not None:
            from edgekit.serve.lm_shadow import LMShadow

            max_kld = dict(self.budget.bounds).get("kld") if self.budget else None
            shadow = LMShadow(
                choice.name, choice.path, options.shadow, self.shadow_file, options.shadow_rate,
                max_kld, metrics,
            )  # fmt: skip
            self.engine.on_done = shadow.offer

        def monitor():
            if shadow is None:
                return {"drift": {"note": "no shadow: start the server with --shadow fp32"}}
            return {"drift": shadow.summary()}

        return openai_routes(
            self.engine, choice.name, metrics, int(options.max_body_mb * 2**20), monitor, on_ready
        )

    def _wrap(self, app, metrics, series):
        """The endpoints wrapped once in the middleware."""
        from edgekit.serve import middleware

        app = middleware.CountRequests(app, metrics, series)
        if self.api_key is not None:
            app = middleware.Authenticate(app, self.api_key, metrics)
        if self.log is not None:
            app = middleware.AccessLog(app, self.log)
        self.app = app
        return app

    def close(self) -> None:
        if self.state is not None:
            self.state.close()
        if self.engine is not None:
            self.engine.close()
        if self.log is not None:
            self.log.close()

    def __enter__(self) -> Service:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def warn(message: str) -> None:
    print(f"edgekit: warning: {message}", file=sys.stderr)


def build_app(options: ServeOptions, on_ready: Callable[[], None] | None = None) -> Service:
    """The Service loaded: its ASGI app is `.app`; close it when done (or use it in `with`)."""
    service = Service(options)
    try:
        service.load(on_ready)
    except BaseException:
        service.close()
        raise
    return service


def run(options: ServeOptions, on_ready: Callable[[list[str], str], None] | None = None) -> None:
    """Serve until SIGTERM or Ctrl-C (in-flight requests finish first);
    `on_ready(names, url)` once the server accepts requests."""
    service = Service(options)
    max_connections = connection_limit(options.max_connections)
    sock = bind(options.host, options.port)
    host, port = sock.getsockname()[:2]
    url = f"http://{f'[{host}]' if ':' in host else host}:{port}"
    try:
        app = service.load(None if on_ready is None else lambda: on_ready(service.names, url))
        serve(app, sock, options.drain_timeout, max_connections, options.client_timeout)
    finally:
        sock.close()
        service.close()
