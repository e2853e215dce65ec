"""`edgekit serve` as a library: the Open Inference Protocol over HTTP, Prometheus metrics, the
live monitors.

    from edgekit.serve import ServeOptions, build_app, run
    run(ServeOptions(Path("digits_cnn.edgekit"), port=9000))   # until SIGTERM or Ctrl-C

options.py (what to do, checked) · service.py (the assembly) · server.py (what to serve, the
socket, uvicorn) · connections.py (limits on uvicorn's connections) · middleware.py (auth, access
log, request metrics) · app.py (the endpoints) · protocol.py (the wire format) · model.py
(onnxruntime behind a queue, batching) · monitor.py (input ranges, live drift) · metrics.py ·
repository.py (a Triton model repository instead of serving).
"""

from edgekit.serve.options import ServeOptions
from edgekit.serve.service import build_app, run

__all__ = ["ServeOptions", "build_app", "run"]
