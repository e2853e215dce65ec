"""Run onnxruntime-genai's model builder for several variants in one process:
`python -m edgekit.lm.builder_run JOBS.json`. Importing the builder (torch, transformers) takes
most of the time of building a small model, so edgekit starts one process for all the variants
of a folder rather than one each. Each job is the builder's own command line, run as
`python -m onnxruntime_genai.models.builder ARGS` would run it; its output goes to the job's log
file and whether it succeeded to the job's `done` file. Host side, started by edgekit.lm.export."""

from __future__ import annotations

import contextlib
import json
import runpy
import sys
import traceback
from pathlib import Path


def run_jobs(jobs: list[dict]) -> None:
    for job in jobs:
        with (
            open(job["log"], "w", encoding="utf-8", errors="replace") as log,
            contextlib.redirect_stdout(log),
            contextlib.redirect_stderr(log),
        ):
            sys.argv = ["onnxruntime_genai.models.builder", *job["argv"]]
            try:
                runpy.run_module("onnxruntime_genai.models.builder", run_name="__main__")
                ok = True
            except SystemExit as exc:  # argparse refused the arguments
                ok = exc.code in (0, None)
            except Exception:
                traceback.print_exc()
                ok = False
        Path(job["done"]).write_text("ok" if ok else "failed")


if __name__ == "__main__":
    run_jobs(json.loads(Path(sys.argv[1]).read_text(encoding="utf-8")))
