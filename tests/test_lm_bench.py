"""edgekit.lm.bench (pp/tg tokens/s, TTFT, peak RSS of LM variant folders) and `edgekit bench` on an
LM folder, on a tiny Llama made here (random weights, its own byte-level BPE tokenizer) and turned
into onnxruntime-genai folders by its real model builder, fp32 and int4."""

from __future__ import annotations

import json
import os
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import run_edgekit, torch_blocked_env

from edgekit.errors import EdgekitError
from edgekit.lm.bench import measure_lm
from edgekit.report.read import read_report

pytestmark = pytest.mark.slow

CONTEXT = 1024
QUICK = {"min_time": 0.2, "max_time": 1.0}
LM_QUICK = ("--min-time", "0.2", "--max-time", "0.5")


def test_measures_both_variants_torch_free(tiny_llama_variants, tmp_path):
    """In a process where torch cannot be imported (parent and workers alike, as on a device with
    the core install), both variants get positive tokens/s inside sane intervals."""
    code = (
        "import json, sys\n"
        "from dataclasses import asdict\n"
        "from edgekit.lm.bench import measure_lm\n"
        f"out = measure_lm({ {k: str(v) for k, v in tiny_llama_variants.items()}!r}, threads=2, "
        "min_time=0.3, max_time=2)\n"
        "assert 'torch' not in sys.modules\n"
        "print(json.dumps({k: asdict(v) for k, v in out.items()}))\n"
    )
    env = {**os.environ, **torch_blocked_env(tmp_path)}
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300
    )
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)
    assert set(result) == {"fp32", "int4"}
    for name, m in result.items():
        assert m["error"] is None, (name, m["error"])
        rates = [*m["pp"].values(), *m["tg"].values()]
        assert set(m["pp"]) == {"128", "512"} and set(m["tg"]) == {"128"}
        for r in rates:
            assert r["rounds"] >= 3
            assert 0 < r["low"] <= r["tokens_per_s"] <= r["high"] < 1e7
            assert r["high"] / r["low"] < 3  # an interval, not noise
        ttft = m["ttft_ms"]
        assert 0 < ttft["low"] <= ttft["median"] <= ttft["high"]
        # the first token comes after the 128-token prefill, so no sooner than the prefill itself
        assert ttft["median"] >= 128 / m["pp"]["128"]["tokens_per_s"] * 1000 * 0.8
        assert m["threads"] == 2 and m["context_length"] == 513
        assert 10e6 < m["peak_rss_bytes"] < 4e9
        assert any("random token ids" in n for n in m["notes"])


def test_threads_are_set_and_read_back(tiny_llama_variants):
    one = measure_lm({"int4": tiny_llama_variants["int4"]}, threads=1, prompt_lengths=(8,), gen_tokens=32,
                     **QUICK)["int4"]  # fmt: skip
    assert one.error is None and one.threads == 1
    assert set(one.pp) == {8} and set(one.tg) == {32}
    assert one.context_length == 16 + 32 + 1  # the tg run after its 16-token prompt is the longest


def test_prompt_longer_than_context_is_a_clear_error(tiny_llama_variants):
    with pytest.raises(EdgekitError, match=r"longer than the context .*1024 tokens"):
        measure_lm(tiny_llama_variants, threads=2, prompt_lengths=(128, CONTEXT), **QUICK)
    with pytest.raises(EdgekitError, match="generated tokens"):
        measure_lm(tiny_llama_variants, threads=2, gen_tokens=CONTEXT, **QUICK)


def test_not_a_variant_folder_is_a_clear_error(tmp_path):
    with pytest.raises(EdgekitError, match="no genai_config.json"):
        measure_lm({"x": tmp_path}, threads=2, **QUICK)
    (tmp_path / "genai_config.json").write_text("{not json")
    with pytest.raises(EdgekitError, match="cannot be read"):
        measure_lm({"x": tmp_path}, threads=2, **QUICK)


def test_a_broken_model_is_an_error_row_not_a_crash(tiny_llama_variants, tmp_path):
    broken = tmp_path / "broken"
    broken.mkdir()
    for f in tiny_llama_variants["int4"].iterdir():
        if f.is_file():
            (broken / f.name).write_bytes(f.read_bytes())
    (broken / "model.onnx").write_bytes(b"not an onnx file")
    result = measure_lm({"broken": broken, "int4": tiny_llama_variants["int4"]}, threads=2,
                        prompt_lengths=(32,), gen_tokens=8, **QUICK)  # fmt: skip
    assert result["broken"].error and "could not load" in result["broken"].error
    assert result["int4"].error is None and result["int4"].tg[8]["tokens_per_s"] > 0


def test_cli_bench_on_lm_folders_is_torch_free(tiny_llama_variants, tmp_path, block_imports):
    out = tmp_path / "out"
    proc = run_edgekit(
        "bench", tiny_llama_variants["int4"], tiny_llama_variants["fp32"], "-o", out, "--threads", "2",
        "--min-time", "0.3", "--max-time", "1", env=block_imports(),
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    for column in ("pp512 tok/s", "tg128 tok/s", "TTFT ms", "peak RSS", "size"):
        assert column in proc.stdout
    assert "KLD" not in proc.stdout  # a bench measures no drift
    report = read_report(out / "report.json").to_json()  # the contract's reader takes it
    assert report["task"] == "causal-lm" and report["settings"]["intra_op_threads"] == 2
    rows = {r["name"]: r for r in report["variants"]}
    assert set(rows) == {"int4", "fp32"}
    for row in rows.values():
        assert row["error"] is None and row["runtime"] == "onnxruntime-genai"
        assert row["tokens_per_s"]["tg128"]["median"] > 0
        assert row["tokens_per_s"]["pp512"]["median"] > 0 and row["memory"]["peak_rss_bytes"] > 0
    assert rows["int4"]["size_bytes"] < rows["fp32"]["size_bytes"]
    # the same rows as optimize writes: compare reads two LM bench reports
    compared = run_edgekit("compare", out, out, env=block_imports())
    assert compared.returncode == 0, compared.stderr


def test_cli_prompt_longer_than_context_exits_2_and_keeps_earlier_output(
    tiny_llama_variants, tmp_path
):
    out = tmp_path / "out"
    first = run_edgekit("bench", tiny_llama_variants["int4"], "-o", out, "--prompt-tokens", "16",
                        "--gen-tokens", "8", "--min-time", "0.2", "--max-time", "0.5")  # fmt: skip
    assert first.returncode == 0, first.stderr
    assert "pp16 tok/s" in first.stdout and "tg8 tok/s" in first.stdout  # the lengths measured
    before = (out / "report.json").read_text()
    proc = run_edgekit(
        "bench", tiny_llama_variants["int4"], "-o", out, "--prompt-tokens", "128,4096"
    )
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "4096 tokens" in proc.stderr and "context" in proc.stderr
    assert (out / "report.json").read_text() == before


def test_cli_mixing_lm_folders_and_onnx_files_exits_2(tiny_llama_variants, tmp_path):
    proc = run_edgekit("bench", tiny_llama_variants["int4"], tmp_path / "model.onnx")
    assert proc.returncode == 2 and "separate runs" in proc.stderr
    proc = run_edgekit("bench", tiny_llama_variants["int4"], "--threads", "1,2")
    assert proc.returncode == 2 and "one thread count" in proc.stderr
    proc = run_edgekit("bench", tiny_llama_variants["int4"], "--target", "ssh://a@h1",
                       "--target", "ssh://a@h2")  # fmt: skip
    assert proc.returncode == 2 and "one --target at a time" in " ".join(proc.stderr.split())


# ---- on a device over SSH: a real sshd on 127.0.0.1, the device's Python this venv's ----------

HOSTILE = 'it\'s an "lm" $(touch pwned) `touch pwned`'


def test_cli_bench_on_lm_folders_over_ssh(
    tiny_llama_variants, ssh_target, ssh_env, tmp_path, block_imports
):
    """The folders and bench_worker.py are copied to the device and timed there (torch-free on
    both sides), the report's device section read there; the device's folder is removed."""
    hostile = tmp_path / HOSTILE
    shutil.copytree(tiny_llama_variants["int4"], hostile)
    before = set(Path("/tmp").glob("edgekit.*"))
    out = tmp_path / "out"
    proc = run_edgekit(
        "bench", hostile, tiny_llama_variants["fp32"], "--target", ssh_target,
        "--remote-python", sys.executable, "--prompt-tokens", "32", "--gen-tokens", "16",
        "--threads", "1", "-o", out, *LM_QUICK, env={**ssh_env, **block_imports()}, cwd=tmp_path,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert f"measured on {ssh_target}, over SSH" in proc.stdout
    report = read_report(out / "report.json").to_json()
    device = report["device"]
    assert device["target"] == ssh_target and device["arch"] and device["cores"] >= 1
    assert device["onnxruntime_genai"] and device["load_avg_after"] is not None
    rows = {r["name"]: r for r in report["variants"]}
    assert set(rows) == {HOSTILE, "fp32"}
    for row in rows.values():
        assert row["error"] is None, row["error"]
        assert row["tokens_per_s"]["tg16"]["median"] > 0 and row["threads"] == 1
        assert row["memory"]["peak_rss_bytes"] > 0
    assert rows[HOSTILE]["size_bytes"] < rows["fp32"]["size_bytes"]
    made = [*tmp_path.rglob("pwned*"), *Path.home().glob("pwned*"), *Path("/tmp").glob("pwned*")]
    assert made == []
    assert set(Path("/tmp").glob("edgekit.*")) <= before  # the device's folder is gone


def test_cli_bench_lm_over_ssh_without_onnxruntime_genai_says_how_to_fix(
    tiny_llama_variants, ssh_target, ssh_env, tmp_path
):
    bare = tmp_path / "bare-python"
    # the same interpreter, told to ignore site-packages: no numpy, no onnxruntime-genai
    bare.write_text(f'#!/bin/sh\nexec {shlex.quote(sys.executable)} -I -S "$@"\n')
    bare.chmod(0o755)
    out = tmp_path / "out"
    proc = run_edgekit("bench", tiny_llama_variants["int4"], "--target", ssh_target,
                       "--remote-python", bare, "-o", out, *LM_QUICK, env=ssh_env, cwd=tmp_path,
                       timeout=60)  # fmt: skip
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "onnxruntime_genai" in proc.stderr
    assert "python3 -m pip install onnxruntime-genai numpy" in proc.stderr
    assert not out.exists()
