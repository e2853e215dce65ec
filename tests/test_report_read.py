"""read_report on good and broken files: a clear EdgekitError (exit 2), never a traceback."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from conftest import run_edgekit, torch_blocked_env
from fixtures.sample_reports import FIXTURES, make_report, write

from edgekit.errors import EdgekitError
from edgekit.report.read import read_report
from edgekit.report.schema import VARIANT_KEYS


def test_good_report_loads_with_every_variant_key(tmp_path):
    report = read_report(FIXTURES / "good_small.json")
    assert [v["name"] for v in report["variants"]][:2] == ["fp32", "simplified"]
    assert all(set(VARIANT_KEYS) <= set(v) for v in report["variants"])
    # a folder holding report.json works too
    write(make_report(n=20), tmp_path / "report.json")
    assert read_report(tmp_path)["kind"] == "edgekit-report"


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
    assert read_report(tmp_path / "nan.json")["variants"][0]["accuracy"]["cosine_min"] is None


def test_cli_reports_unusable_input_with_exit_2():
    result = run_edgekit("compare", FIXTURES / "truncated.json")
    assert result.returncode == 2, result.stderr
    assert "edgekit: error:" in result.stderr and "truncated" in result.stderr
    assert "Traceback" not in result.stderr


def test_reading_is_torch_free(tmp_path):
    code = (
        "import sys\n"
        "from edgekit.report.read import read_report\n"
        "import edgekit.report.compare, edgekit.report.html\n"
        f"read_report({str(FIXTURES / 'good_small.json')!r})\n"
        "assert 'torch' not in sys.modules\n"
        "print('ok')\n"
    )
    env = {**os.environ, **torch_blocked_env(tmp_path)}
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "ok"
