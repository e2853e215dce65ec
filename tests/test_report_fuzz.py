"""Fuzzing the report readers: real reports, mutated at random (fixed seed, bounded time), go
through reading, compare and every renderer. The only outcomes allowed are a result or one
EdgekitError; through the real CLI, exit 0, 1 or 2 and never a traceback."""

from __future__ import annotations

import copy
import functools
import io
import json
import math
import os
import random
import time

import pytest
from fixtures.sample_reports import FIXTURES, load, make_report
from helpers import run_edgekit
from rich.console import Console

from edgekit.errors import EdgekitError
from edgekit.report import compare, html, markdown, terminal
from edgekit.report.read import read_report

pytestmark = pytest.mark.slow  # every test here starts a process or exports with torch

# A longer hunt: EDGEKIT_FUZZ_S=600 EDGEKIT_FUZZ_SEED=7 pytest tests/test_report_fuzz.py
SEED = int(os.environ.get("EDGEKIT_FUZZ_SEED", 20261130))
BUDGET_S = float(os.environ.get("EDGEKIT_FUZZ_S", 12))  # in-process; the CLI cases come on top
HOSTILE = "\x1b[2J\x1b]0;t\x07[bold]x[/]`|<img src=x>](javascript:1)$\u202e"


def _bench_like() -> dict:
    """The shape `edgekit bench` writes: max, rounds, round_sizes, flops, the profile object."""
    report = make_report(seed=7, n=60, drop=("pruned-30",))
    report["command"], report["source"] = "bench", None
    report["settings"]["baseline"] = "fp32"
    for v in report["variants"]:
        lat = v["latency_ms"]
        if lat:
            lat.update(max=max(lat["samples"]), rounds=3, round_sizes=[20, 20, 20], outliers=0)
            lat["median_ci95"] = [lat["p50"] * 0.99, lat["p50"] * 1.01]
        v["threads"], v["gflops_per_s"] = 2, 1.5
        v["flops"] = {"macs": 10, "flops": 20, "by_op": {"Conv": 10}, "complete": True}
        v["profile"] = {"runs": 5, "ops": [{"op_type": "Conv", "total_us": 50.0, "share": 0.7}]}
    return report


def _seeds() -> list[dict]:
    return [load("good_small.json"), make_report(seed=1, n=60), _bench_like()]


def _values(rng: random.Random):
    return rng.choice(
        [
            None, True, False, 0, -1, 1, 2**63, 10**200, 1e308, -1e308, 1e-300, 0.5, -0.0,
            float("nan"), float("inf"), "", "x", "12", HOSTILE, "fp32", [], {}, [[[[]]]],
            [1, 2, 3], [None], {"a": {"b": [HOSTILE]}}, "a" * 5000, ["fp32", 1],
        ]
    )  # fmt: skip


def _paths(node, prefix=()):
    """Every (path, value) in the tree."""
    yield prefix, node
    if isinstance(node, dict):
        for k, v in node.items():
            yield from _paths(v, (*prefix, k))
    elif isinstance(node, list):
        for i, v in enumerate(node):
            yield from _paths(v, (*prefix, i))


def _mutate(report: dict, rng: random.Random) -> list[str]:
    """Apply one to three mutations in place; returns what was done (for the failure message)."""
    done = []
    for _ in range(rng.randint(1, 3)):
        # single samples are most of the tree: pick one only now and then
        paths = [
            p for p, _ in _paths(report) if p and (p[-2:-1] != ("samples",) or rng.random() < 0.03)
        ]
        path = rng.choice(paths)
        parent = report
        for key in path[:-1]:
            parent = parent[key]
        key, value = path[-1], parent[path[-1]]
        op = rng.choice(["drop", "replace", "replace", "swap", "empty", "wrap", "dup", "scale"])
        if op == "drop":
            del parent[key]
        elif op == "replace":
            parent[key] = _values(rng)
        elif op == "swap":  # the same content as another type
            parent[key] = (
                str(value)
                if isinstance(value, (int, float))
                else list(value.values())
                if isinstance(value, dict)
                else {str(i): x for i, x in enumerate(value)}
                if isinstance(value, list)
                else len(value)
                if isinstance(value, str)
                else [value]
            )
        elif op == "empty" and isinstance(value, (list, dict, str)):
            parent[key] = type(value)()
        elif op == "wrap":
            parent[key] = [value] if rng.random() < 0.5 else {"value": value}
        elif op == "dup" and isinstance(parent, list):
            parent.append(copy.deepcopy(value))
        elif op == "scale" and isinstance(value, (int, float)) and not isinstance(value, bool):
            factor = rng.choice([-1, 0, 1e300, 1e-300, 10**400])
            try:
                parent[key] = value * factor
            except OverflowError:  # a float times a 400-digit integer
                parent[key] = math.inf
        done.append(f"{op} {'/'.join(map(str, path))}")
    return done


def _text(report: dict) -> str:
    # NaN and Infinity as JSON tokens too: some writers let them through
    return json.dumps(report, allow_nan=True)


def _exercise(path, good: dict, i: int) -> None:
    """Everything a user can make edgekit do with a report file; the slow renderers (rich
    tables, matplotlib) on a share of the cases, so that more cases fit the time budget."""
    report = read_report(path).to_json()
    markdown.report_page(report)
    console = Console(file=io.StringIO(), force_terminal=True, width=160)
    if i % 4 == 0:
        terminal.show_report(report, console)
    if i % 40 == 0:
        html.render(report)
    gates = {"fail_if_slower": 5, "fail_if_drift": 0.99, "fail_if_larger": 5}
    result = (
        compare.compare(report, **gates),
        compare.compare(good, report, **gates),
        compare.compare(report, good, normalize=True, fail_if_slower=5),
    )[i % 3]
    json.dumps(result, allow_nan=False)  # `compare --json` must print valid JSON
    markdown.comparison(result)
    if i % 4 == 1:
        terminal.show_comparison(result, console)


def test_mutated_reports_give_a_result_or_one_clear_error(tmp_path, monkeypatch):
    # fewer bootstrap resamples: the same code paths, in a fraction of the time
    monkeypatch.setattr(compare, "sample_ratio", functools.partial(compare.sample_ratio, n_boot=64))
    rng = random.Random(SEED)
    seeds = _seeds()
    good = read_report(FIXTURES / "good_small.json").to_json()
    path = tmp_path / "report.json"
    outcomes = {"ok": 0, "error": 0}
    start, i = time.monotonic(), 0
    while time.monotonic() - start < BUDGET_S:
        report = copy.deepcopy(rng.choice(seeds))
        done = _mutate(report, rng)
        path.write_text(_text(report))
        try:
            _exercise(path, good, i)
            outcomes["ok"] += 1
        except EdgekitError as exc:
            message = str(exc)
            assert "\n" not in message and len(message) < 2000, (done, message)
            assert "\x1b" not in message, (done, message)
            outcomes["error"] += 1
        except Exception as exc:  # noqa: BLE001 - the point of the test
            raise AssertionError(f"case {i} {done}: {type(exc).__name__}: {exc}") from exc
        i += 1
    # the mutations reached both sides: usable reports and refused ones
    assert outcomes["ok"] > 15 and outcomes["error"] > 15, outcomes


def test_mutated_reports_through_the_cli(tmp_path):
    rng = random.Random(SEED + 1)
    seeds = _seeds()
    good = FIXTURES / "good_small.json"
    codes = set()
    for i in range(9):
        report = copy.deepcopy(seeds[i % len(seeds)])
        done = _mutate(report, rng)
        path = tmp_path / f"m{i}.json"
        path.write_text(_text(report))
        extra = ((), ("--format", "md"), ("--json",))[i % 3]
        result = run_edgekit("compare", good, path, "--fail-if-slower", "5", *extra)
        codes.add(result.returncode)
        assert result.returncode in (0, 1, 2), (done, result.stderr)
        assert "Traceback" not in result.stderr, (done, result.stderr)
        assert "internal error" not in result.stderr, (done, result.stderr)
        if extra == ("--json",) and result.returncode != 2:
            data = json.loads(result.stdout, parse_constant=lambda c: math.nan)
            floats = [v for _, v in _paths(data) if isinstance(v, float)]
            assert all(math.isfinite(v) for v in floats), done
    assert 2 in codes and codes & {0, 1}, codes
