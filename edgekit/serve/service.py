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
from edgekit.serve.server import bind, check_extra, choose, connection_limit, serve


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
        names = [choice.name for choice in self.choices]
        twice = next((n for n in names if names.count(n) > 1), None)
        if twice is not None:
            raise EdgekitError(f"Two variants would be served as {twice!r}.")
        self.shadow_file = self._shadow_file()
        report = self.report or {}
        budget_text = options.max_drift or report.get("budget")
        if budget_text:
            from edgekit.recommend import parse_budget

            self.budget = parse_budget(budget_text)
        else:
            self.budget = None
        self.state = self.log = self.app = None

    def _shadow_file(self) -> Path | None:
        shadow = self.options.shadow
        if not shadow:
            return None
        if self.report is None:
            if not Path(shadow).is_file():
                raise EdgekitError(
                    f"--shadow {shadow}: serving one .onnx file, the shadow must be an "
                    ".onnx file too (or serve the optimize output folder and name a variant)."
                )
            return Path(shadow)
        _, (choice,) = choose(self.options.path, shadow)
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
        app = middleware.CountRequests(routes(self.state, on_ready), metrics, series)
        if self.api_key is not None:
            app = middleware.Authenticate(app, self.api_key, metrics)
        if self.log is not None:
            app = middleware.AccessLog(app, self.log)
        self.app = app
        return app

    def close(self) -> None:
        if self.state is not None:
            self.state.close()
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
