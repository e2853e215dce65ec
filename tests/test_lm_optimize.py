"""`edgekit optimize FOLDER` on a causal LM: the tiny Llama end to end through the real CLI
(builder, drift on held-out text, onnxruntime-genai timing), and the LM report, table, budget and
recommendation on their own."""

import json

import pytest
from helpers import run_edgekit

from edgekit.errors import EdgekitError
from edgekit.lm.pipeline import default_heldout
from edgekit.recommend import default_lm_budget, parse_lm_budget, recommend_lm
from edgekit.report import cells, markdown
from edgekit.report.read import read_report
from edgekit.report.schema import Report

RECIPES = ("fp32", "int8", "int4", "int4-b128", "int4-mixed")
SPEEDS = ("pp128", "pp512", "tg128")
DRIFT = ("perplexity", "ppl_increase_pct", "kld_mean", "same_top1", "greedy_agreement")


@pytest.mark.slow
def test_optimize_writes_the_lm_rows(tiny_llama_optimized):
    out, _ = tiny_llama_optimized
    report = json.loads((out / "report.json").read_text())
    assert report["task"] == "causal-lm"
    assert report["source"]["architecture"] == "LlamaForCausalLM"
    assert report["budget"] == "kld<=0.05,ppl-increase<=5%"
    by_name = {v["name"]: v for v in report["variants"]}
    assert tuple(by_name) == RECIPES
    for name, v in by_name.items():
        assert v["error"] is None, (name, v["error"])
        assert v["runtime"] == "onnxruntime-genai"
        assert (out / v["file"] / "genai_config.json").is_file()
        assert all(v["tokens_per_s"][key]["median"] > 0 for key in SPEEDS), name
        assert v["ttft_ms"]["median"] > 0
        assert v["memory"]["peak_rss_bytes"] > 0
        assert all(v["accuracy"][key] is not None for key in DRIFT), name
        # every builder variant, fp32 too, computes the head for the last prompt position only
        (export,) = [p["settings"] for p in v["passes"] if p["name"] == "export-lm"]
        assert export == {"exporter": "builder", "prune_lm_head": "true"}, name
    fp32 = by_name["fp32"]["accuracy"]
    assert fp32["kld_mean"] == pytest.approx(0, abs=1e-6) and fp32["same_top1"] == 1.0
    # 4-bit weights are smaller than 8-bit ones, which are smaller than float ones
    sizes = [by_name[n]["size_bytes"] for n in ("fp32", "int8", "int4")]
    assert sizes == sorted(sizes, reverse=True)
    assert by_name["int4"]["accuracy"]["kld_mean"] > by_name["int8"]["accuracy"]["kld_mean"]
    read_report(out / "report.json")  # the contract's own reader takes it


@pytest.mark.slow
def test_optimize_prints_the_lm_table_and_a_recommendation_within_budget(tiny_llama_optimized):
    out, result = tiny_llama_optimized
    assert "causal LM detected: LlamaForCausalLM, " in result.stderr
    assert "parameters" in result.stderr
    for header in ("pp512 tok/s", "tg128 tok/s", "TTFT ms", "peak RSS", "size", "perplexity"):
        assert header in result.stdout
    assert "KLD" in result.stdout and "same top-1" in result.stdout
    report = json.loads((out / "report.json").read_text())
    rec = report["recommendation"]
    assert f"recommended: {rec['variant']}" in result.stdout
    picked = next(v for v in report["variants"] if v["name"] == rec["variant"])
    assert picked["accuracy"]["kld_mean"] <= 0.05
    assert picked["accuracy"]["ppl_increase_pct"] <= 5
    within = [
        v
        for v in report["variants"]
        if v["accuracy"]["kld_mean"] <= 0.05 and v["accuracy"]["ppl_increase_pct"] <= 5
    ]
    fastest = max(within, key=lambda v: v["tokens_per_s"]["tg128"]["median"])
    assert rec["variant"] == fastest["name"]
    assert "pp512" in rec["reason"]
    assert "| tg128 tok/s |" in (out / "report.md").read_text()


@pytest.mark.slow
def test_optimize_refuses_an_output_folder_holding_the_model(tiny_llama_folder):
    result = run_edgekit("optimize", tiny_llama_folder, "-o", tiny_llama_folder)
    assert result.returncode == 2, result.stderr
    assert "holds an input" in result.stderr
    assert (tiny_llama_folder / "config.json").is_file()


@pytest.mark.slow
def test_options_of_tensor_models_are_refused_for_a_folder(tiny_llama_folder, tmp_path):
    result = run_edgekit("optimize", tiny_llama_folder, "--arch", "x.py:Net")
    assert result.returncode == 2
    assert "--arch" in result.stderr and "Traceback" not in result.stderr
    result = run_edgekit("optimize", tiny_llama_folder, "--prune", "structured:0.5")
    assert result.returncode == 2
    assert "depth:N" in result.stderr and "Traceback" not in result.stderr


def test_held_out_text_beside_the_folder_is_found(tmp_path):
    folder = tmp_path / "my-lm"
    folder.mkdir()
    assert default_heldout(folder) is None
    (tmp_path / "my-lm-heldout.txt").write_text("text")
    assert default_heldout(folder) == (tmp_path / "my-lm-heldout.txt").resolve()


# ---- the budget and the recommendation, on report rows ----------------------------------------


def row(name, tg, kld, ppl, error=None):
    return {
        "name": name,
        "error": error,
        "size_bytes": 1000,
        "runtime": "onnxruntime-genai",
        "tokens_per_s": {
            "tg128": {"median": tg, "low": tg * 0.9, "high": tg * 1.1, "rounds": 5},
            "pp512": {"median": 10 * tg, "low": 9 * tg, "high": 11 * tg, "rounds": 5},
        },
        "accuracy": {"kld_mean": kld, "ppl_increase_pct": ppl},
    }


def test_the_fastest_generation_within_budget_is_recommended():
    rows = [
        row("fp32", 100, 0.0, 0.0),
        row("int8", 150, 0.001, 0.1),
        row("int4", 300, 0.2, 9.0),  # fastest, but over budget
        row("int4-mixed", 200, 0.03, 2.0),
    ]
    rec = recommend_lm(rows, "fp32", default_lm_budget())
    assert rec["variant"] == "int4-mixed"
    assert "int4: over budget (kld 0.2, ppl-increase 9%)" in rec["reason"]
    assert "pp512 2000.0 tokens/s" in rec["reason"]
    assert recommend_lm(rows, "fp32", parse_lm_budget("kld<=0.5"))["variant"] == "int4"
    assert recommend_lm(rows, "fp32", parse_lm_budget("ppl-increase<=1%"))["variant"] == "int8"


def test_unmeasured_drift_is_never_within_budget():
    rows = [row("fp32", 100, 0.0, 0.0), row("int4", 300, None, None)]
    rec = recommend_lm(rows, "fp32", default_lm_budget())
    assert rec["variant"] == "fp32"
    assert "kld_mean not measured" in rec["reason"]
    failed = [row("fp32", 100, 0, 0, error="builder failed")]
    assert recommend_lm(failed, "fp32", default_lm_budget())["variant"] is None


@pytest.mark.parametrize(
    "text", ["kld<0.05", "kld<=0.05%", "ppl-increase<=5", "cosine>=0.99", "kld<=1,kld<=2", ""]
)
def test_a_budget_that_cannot_be_read_is_refused(text):
    with pytest.raises(EdgekitError):
        parse_lm_budget(text)


def test_budget_text_round_trips():
    assert str(parse_lm_budget(" kld <= 0.02 , ppl-increase<=3% ")) == "kld<=0.02,ppl-increase<=3%"
    assert str(default_lm_budget()) == "kld<=0.05,ppl-increase<=5%"


def lm_report(**variant) -> dict:
    v = {
        "name": "int4",
        "parent": "fp32",
        "size_bytes": 10,
        "latency_ms": None,
        "memory": {"peak_rss_bytes": 2048},
        "accuracy": {"perplexity": 12.5, "kld_mean": 0.01234, "same_top1": 0.97},
        "error": None,
        "tokens_per_s": {"pp512": {"median": 250.0}, "tg128": {"median": 80.25}},
        "ttft_ms": {"median": 12.0, "low": 11.0, "high": 13.0},
        **variant,
    }
    return {"schema_version": 1, "kind": "edgekit-report", "task": "causal-lm", "variants": [v]}


def test_lm_rows_render_as_the_lm_table():
    report = Report.from_json(lm_report()).to_json()
    headers = cells.headers(terminal=True, report=report)
    assert headers == [
        "variant", "pp512 tok/s", "tg128 tok/s", "TTFT ms", "peak RSS", "size", "perplexity",
        "KLD", "same top-1",
    ]  # fmt: skip
    assert cells.rows(report, terminal=True)[0] == [
        "int4", "250.0", "80.2", "12.0", "2.0 KB", "10 B", "12.500", "0.0123", "97.0%",
    ]  # fmt: skip
    assert "| tg128 tok/s |" in markdown.report_page(report)
    tensor = Report.from_json({**lm_report(), "task": None}).to_json()
    assert "p50 ms" in cells.headers(report=tensor)  # reports without the task: as before


def test_lm_speed_columns_are_the_lengths_measured():
    rate = {"median": 100.0}
    speeds = {"pp16": rate, "pp64": rate, "pp8": rate, "tg8": {"median": 50.0}, "bogus": rate}
    report = Report.from_json(lm_report(tokens_per_s=speeds)).to_json()
    full = [h for h in cells.headers(report=report) if "tok/s" in h]
    assert full == ["pp64 tok/s", "pp16 tok/s", "pp8 tok/s", "tg8 tok/s"]
    narrow = [h for h in cells.headers(terminal=True, report=report) if "tok/s" in h]
    assert narrow == ["pp64 tok/s", "tg8 tok/s"]  # the longest prompt, every generation
    assert "50.0" in cells.rows(report, terminal=True)[0]
    # nothing measured (every variant failed): llama-bench's columns, each saying so
    failed = Report.from_json(lm_report(tokens_per_s=None, error="could not load")).to_json()
    full = [h for h in cells.headers(report=failed) if "tok/s" in h]
    assert full == ["pp512 tok/s", "pp128 tok/s", "tg128 tok/s"]
    # a report from a file with many lengths: a bounded table
    many = {f"pp{n}": rate for n in range(1, 50)}
    wide = Report.from_json(lm_report(tokens_per_s=many)).to_json()
    assert len([h for h in cells.headers(report=wide) if "tok/s" in h]) == cells.MAX_RATE_COLUMNS


@pytest.mark.parametrize(
    "bad",
    [
        {"tokens_per_s": {"tg128": {"median": -1.0}}},
        {"tokens_per_s": {"tg128": 5}},
        {"tokens_per_s": []},
        {"ttft_ms": {"median": 0}},
        {"accuracy": {"kld_mean": "low"}},
    ],
)
def test_the_report_reader_refuses_broken_lm_rows(bad):
    with pytest.raises(EdgekitError, match="not a usable edgekit report"):
        Report.from_json(lm_report(**bad))


def test_an_lm_report_keeps_its_fields_through_a_round_trip():
    data = lm_report()
    again = Report.from_json(data).to_json()
    assert again["task"] == "causal-lm"
    assert again["variants"][0]["tokens_per_s"] == data["variants"][0]["tokens_per_s"]
    assert again["variants"][0]["ttft_ms"] == data["variants"][0]["ttft_ms"]


def test_the_html_page_of_an_lm_report_draws_speed_against_kld():
    pytest.importorskip("matplotlib")
    from edgekit.report import html

    fp32 = lm_report(name="fp32", parent=None)["variants"][0]
    fp32["accuracy"] = {"kld_mean": 0.0, "perplexity": 12.0, "same_top1": 1.0}
    report = lm_report()
    report["variants"].insert(0, fp32)
    page = html.render(Report.from_json(report).to_json())
    assert 'id="chart-speed-kld"' in page
    assert "Generation speed vs drift" in page


# ---- depth pruning ---------------------------------------------------------------------------


@pytest.mark.slow
def test_dropping_a_layer_is_the_model_without_it(tmp_path):
    """drop_layer rewrites only names and config: the folder it writes computes what the
    transformers model with that layer deleted computes."""
    import torch
    from transformers import AutoModelForCausalLM

    from edgekit.lm.prune import drop_layer, prune_depth
    from models import tiny_llama

    source = tiny_llama(tmp_path / "three", layers=3)
    drop_layer(source, tmp_path / "without-1", 1)
    pruned = AutoModelForCausalLM.from_pretrained(tmp_path / "without-1").eval()
    assert pruned.config.num_hidden_layers == 2
    full = AutoModelForCausalLM.from_pretrained(source).eval()
    del full.model.layers[1]
    for i, layer in enumerate(full.model.layers):
        layer.self_attn.layer_idx = i
    full.config.num_hidden_layers = 2
    ids = torch.tensor([[0, 5, 77, 300, 12, 9, 400, 33]])
    with torch.no_grad():
        expected = full(ids, use_cache=False).logits
        assert torch.equal(pruned(ids, use_cache=False).logits, expected)
    windows = [ids[0].numpy(), ids[0].flip(0).numpy()]
    rounds = prune_depth(source, tmp_path / "depth-1", 1, windows)
    tried = {int(k): v for k, v in rounds[0]["tried"].items()}
    assert rounds[0]["dropped"] == min(tried, key=tried.get)
    assert json.loads((tmp_path / "depth-1" / "config.json").read_text())["num_hidden_layers"] == 2


@pytest.mark.slow
def test_depth_pruning_without_held_out_text_exits_2(tiny_llama_folder, tmp_path):
    result = run_edgekit("optimize", tiny_llama_folder, "--prune", "depth:1", "-o", tmp_path / "o")
    assert result.returncode == 2, result.stderr
    assert "held-out text" in result.stderr and "--data" in result.stderr
    assert not (tmp_path / "o").exists()
