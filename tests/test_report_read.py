"""read_report on good and broken files: a clear EdgekitError (exit 2), never a traceback."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from fixtures.sample_reports import FIXTURES, make_report, write
from helpers import run_edgekit

from edgekit.errors import EdgekitError
from edgekit.report.read import read_report
from edgekit.report.schema import VARIANT_KEYS
from models import relu_model


def test_good_report_loads_with_every_variant_key(tmp_path):
    report = read_report(FIXTURES / "good_small.json").to_json()
    assert [v["name"] for v in report["variants"]][:2] == ["fp32", "simplified"]
    assert all(set(VARIANT_KEYS) <= set(v) for v in report["variants"])
    # a folder holding report.json works too
    write(make_report(n=20), tmp_path / "report.json")
    assert read_report(tmp_path).to_json()["kind"] == "edgekit-report"


@pytest.mark.parametrize(
    "name, words",
    [
        ("truncated.json", ["truncated"]),
        ("not_json.csv", ["not valid JSON"]),
        ("foreign.json", ["not an edgekit report", '"kind"']),
        ("future_version.json", ["schema_version 2", "0.4.0", "Upgrade edgekit"]),
        ("bad_variant_type.json", ['variants[2] ("int8-static").latency_ms.p50', "number"]),
        ("missing_variant_key.json", ["variants[1] lacks size_bytes"]),
        ("does_not_exist.json", ["no such report file"]),
    ],
)
def test_broken_reports_get_one_clear_error(name, words):
    with pytest.raises(EdgekitError) as info:
        read_report(FIXTURES / name)
    message = str(info.value)
    assert info.value.exit_code == 2
    assert name in message and "\n" not in message
    for word in words:
        assert word in message


@pytest.mark.parametrize(
    "content, words",
    [
        (b"\xff\xfe\x00binary", ["not UTF-8"]),
        (b"", ["truncated"]),
        (b"[1, 2, 3]", ["not an edgekit report", "list"]),
        (b'{"kind": "edgekit-report", "schema_version": "1"}', ["schema_version"]),
        (b'{"kind": "edgekit-report", "schema_version": 1}', ['"variants" list is missing']),
    ],
)
def test_odd_files(tmp_path, content, words):
    path = tmp_path / "report.json"
    path.write_bytes(content)
    with pytest.raises(EdgekitError) as info:
        read_report(path)
    for word in words:
        assert word in str(info.value)


def test_duplicate_names_and_nan(tmp_path):
    report = make_report(n=20)
    report["variants"][1]["name"] = "fp32"
    write(report, tmp_path / "dup.json")
    with pytest.raises(EdgekitError, match="appears twice"):
        read_report(tmp_path / "dup.json")
    # NaN is not JSON; a writer that let one slip meant "not measured", so it reads as null
    text = json.dumps(make_report(n=20)).replace('"cosine_min": 1.0', '"cosine_min": NaN', 1)
    (tmp_path / "nan.json").write_text(text)
    assert read_report(tmp_path / "nan.json").variants[0].accuracy["cosine_min"] is None


@pytest.mark.slow
def test_cli_reports_unusable_input_with_exit_2():
    result = run_edgekit("compare", FIXTURES / "truncated.json")
    assert result.returncode == 2, result.stderr
    assert "edgekit: error:" in result.stderr and "truncated" in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.slow
def test_reading_is_torch_free(tmp_path, block_imports):
    code = (
        "import sys\n"
        "from edgekit.report.read import read_report\n"
        "import edgekit.report.compare, edgekit.report.html\n"
        f"read_report({str(FIXTURES / 'good_small.json')!r})\n"
        "assert 'torch' not in sys.modules\n"
        "print('ok')\n"
    )
    env = {**os.environ, **block_imports()}
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "ok"


def _report_text(**edits) -> str:
    """A sample report as JSON text, with `edits` applied to its first two variants' latency."""
    report = make_report(n=50)
    for key, value in edits.items():
        for v in report["variants"][:2]:
            v["latency_ms"][key] = value
    return json.dumps(report)


def _limits_cases():
    base = json.dumps(make_report(n=50))
    deep = base.replace('"notes": []', '"notes": ' + "[" * 200_000 + "]" * 200_000, 1)
    nested_ok = base.replace('"notes": []', '"notes": ' + "[" * 500 + "]" * 500, 1)
    return [
        (
            "5001-digit int",
            base.replace('"size_bytes": 1240000', '"size_bytes": ' + "9" * 5001),
            2,
            ["5001 digits"],
        ),
        (
            "300-digit int",
            base.replace('"size_bytes": 1240000', '"size_bytes": ' + "9" * 300),
            2,
            ["size_bytes"],
        ),
        ("200,000 deep", deep, 2, ["nested"]),
        ("500 deep", nested_ok, 2, ["nested"]),
        ("negative sample", _report_text(samples=[0.05] * 20 + [-1.0]), 2, ["samples", "positive"]),
        ("zero sample", _report_text(samples=[0.0] * 30), 2, ["samples", "positive"]),
        ("huge samples", _report_text(samples=[1e308] * 30), 2, ["samples"]),
        ("tiny samples", _report_text(samples=[1e-300] * 30), 2, ["samples"]),
        ("huge p50", _report_text(p50=1e308, samples=None), 2, ["p50"]),
        ("negative p50", _report_text(p50=-0.5, samples=None), 2, ["p50"]),
        (
            "1e400 is infinity",
            _report_text(p90=1).replace('"p90": 1', '"p90": 1e400', 1),
            2,
            ["1e400"],
        ),
        (
            "NaN sample",
            _report_text(samples=[0.05] * 20 + ["X"]).replace('"X"', "NaN"),
            2,
            ["samples"],
        ),
        ("NaN p50 is null", _report_text(p50="X").replace('"X"', "NaN"), 0, []),
        (
            "fractional bytes",
            base.replace('"size_bytes": 1240000', '"size_bytes": 1e-300', 1),
            2,
            ["size_bytes"],
        ),
    ]


@pytest.mark.slow
@pytest.mark.parametrize(
    "text, code, words", [c[1:] for c in _limits_cases()], ids=[c[0] for c in _limits_cases()]
)
def test_reading_limits_exit_2_with_a_message(tmp_path, text, code, words):
    """Numbers Python cannot parse or a computation cannot use, and nesting that would exhaust the
    stack: one clear message and exit 2, never a traceback or an internal error (exit 3)."""
    bad = tmp_path / "bad.json"
    bad.write_text(text)
    good = write(make_report(n=50, seed=3), tmp_path / "good.json")
    for args in ((good, bad, "--fail-if-slower", "5"), (bad, "--format", "md"), (bad, "--json")):
        result = run_edgekit("compare", *args)
        assert result.returncode == code, (args, result.stdout[-500:], result.stderr[-2000:])
        assert "Traceback" not in result.stderr and "internal error" not in result.stderr
        if code == 2:
            assert result.stderr.startswith("edgekit: error:") and str(bad) in result.stderr
            assert result.stderr.count("\n") == 1 and len(result.stderr) < 1000
            for word in words:
                assert word in result.stderr, result.stderr


@pytest.mark.slow
def test_targets_file_that_is_binary_exits_2(tmp_path):
    model = relu_model(tmp_path / "m.onnx")
    for content in (b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\xff\xfe", b"pi4\x00\x00\x01garbage\n"):
        targets = tmp_path / "fleet.bin"
        targets.write_bytes(content)
        result = run_edgekit("bench", model, "--targets", targets, "-o", tmp_path / "out")
        assert result.returncode == 2, result.stderr
        assert "Traceback" not in result.stderr and "internal error" not in result.stderr
        assert "fleet.bin" in result.stderr and "text" in result.stderr
