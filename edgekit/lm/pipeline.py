"""`edgekit optimize` for a causal language model: a Hugging Face folder (save_pretrained) in, LM
variant folders (onnxruntime-genai) and a report out.

folder ─read─▶ LMFolder ─build (builder or torch.onnx; variants.RECIPES)─▶ variant folders
  ─drift vs fp32 on held-out text (perplexity, KLD, same top-1, greedy agreement)─▶ accuracy
  ─measure_lm (worker processes, interleaved: pp128, pp512, tg128, TTFT, peak RSS)─▶ speed
  ─recommend_lm (fastest tg128 within the drift budget)─▶ report
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

from edgekit.errors import EdgekitError
from edgekit.fsutil import output_folder, sha256_folder
from edgekit.lm.bench import device_info, folder_size
from edgekit.recommend import LMBudget, default_lm_budget, recommend_lm
from edgekit.report.schema import Report, Variant
from edgekit.report.write import write_outputs

TASK = "causal-lm"
RUNTIME = "onnxruntime-genai"
BASELINE = "fp32"
# Drift: windows of held-out text (perplexity, KLD, same top-1 over every position) and greedy
# continuations of prompts taken from it.
WINDOW = 256
MAX_WINDOWS = 16
PROMPTS = 4
PROMPT_TOKENS = 16
GREEDY_TOKENS = 32
PP_LENGTHS = (128, 512)  # prompt processing is timed at these prompt lengths (llama-bench's)


@dataclass
class LMOptions:
    data: Path | None = None  # held-out text (.txt); default: FOLDER-heldout.txt beside the folder
    budget: LMBudget | None = None  # default: recommend.default_lm_budget()
    recipes: tuple[str, ...] | None = None  # default: every recipe (variants.RECIPES)
    threads: int | None = None  # default: the physical cores
    prune_depth: int = 0  # drop this many decoder layers (depth-N, depth-N-int4); needs text
    min_time: float = 2.0
    max_time: float = 10.0


def default_heldout(folder: Path) -> Path | None:
    """The held-out text shipped beside a model folder: `models/tiny-lm/` → `models/tiny-lm-heldout.txt`."""
    folder = Path(folder).resolve()
    candidate = folder.with_name(folder.name + "-heldout.txt")
    return candidate if candidate.is_file() else None


def optimize_lm(folder, out, options: LMOptions | None = None, step=None) -> Report:
    """Build, measure and recommend the LM variants of the causal-LM `folder` into the output
    folder `out` (published whole at the end; earlier output is never half replaced). `step` is
    edgekit.api's progress context (`with step("what") as update:`)."""
    from edgekit.api import no_progress, timed_steps
    from edgekit.lm.folder import read_lm_folder
    from edgekit.lm.variants import RECIPES

    options = options or LMOptions()
    lm = read_lm_folder(folder)
    recipes = options.recipes or tuple(RECIPES)
    unknown = [r for r in recipes if r not in RECIPES]
    if unknown or BASELINE not in recipes:
        raise EdgekitError(
            f"LM variants {', '.join(recipes)}: edgekit makes {', '.join(RECIPES)}, and always "
            f"{BASELINE} (the reference drift is measured against)."
        )
    _check_exportable(lm)
    text_path = options.data or default_heldout(lm.path)
    text = _read_text(text_path) if text_path else None
    threads = options.threads or _physical_cores()
    budget = options.budget or default_lm_budget()
    steps: list[dict] = []
    step = timed_steps(step or no_progress, steps)
    started = time.perf_counter()
    inputs = [lm.path] + ([text_path] if text_path else [])
    if options.prune_depth and text is None:
        raise EdgekitError(
            f"--prune depth:{options.prune_depth} chooses the layers to drop by perplexity on "
            "held-out text, and there is none: give --data FILE.txt."
        )
    with output_folder(Path(out), inputs=inputs) as staging:
        rows = _build(lm, recipes, staging, threads, step)
        notes = [_source_note(lm)]
        if options.prune_depth:
            windows = _windows(lm, text, text_path)
            rows += _prune(lm, options.prune_depth, windows, staging, threads, step)
            notes.append(
                f"depth-{options.prune_depth}: layers chosen by perplexity on the held-out text "
                "the drift is measured on (expect it to flatter the pruned variants a little)"
            )
        if text is None:
            notes.append(
                "drift is unmeasured: no held-out text (give --data FILE.txt, text the model was "
                "not trained on); without it perplexity and KLD would be measured on nothing "
                "the model is meant to predict, so no variant is within the drift budget"
            )
            for row in rows:
                row.unmeasured["accuracy"] = "no held-out text (--data FILE.txt)"
        else:
            notes += _drift(lm, rows, staging, text, text_path, threads, step)
        _measure(rows, staging, options, threads, step, lm.context_length)
        report = Report(
            "optimize",
            rows,
            source={"path": str(folder), "format": "hf-causal-lm", "architecture": lm.architecture},
            data={"path": str(text_path) if text_path else None, "kind": "held-out text"},
            settings={"intra_op_threads": threads, "baseline": BASELINE, "runtime": RUNTIME},
            budget=str(budget),
            notes=notes,
            extra={"task": TASK, "model": _model_json(lm)},
        )
        report.device = device_info()
        report.recommendation = recommend_lm([r.to_json() for r in rows], BASELINE, budget)
        total = time.perf_counter() - started
        report.extra["timings"] = {
            "total_s": round(total, 3),
            "steps": steps,
            "other_s": round(max(0.0, total - sum(s["seconds"] for s in steps)), 3),
        }
        write_outputs(report, staging)
    return report


def _check_exportable(lm) -> None:
    """An architecture neither exporter can take fails here, before minutes of work."""
    from edgekit.lm import export

    if export.exporter_for(lm) == "builder":
        return
    try:
        import transformers
    except ImportError:
        return  # export_with_torch says what to install
    if getattr(transformers, lm.architecture, None) is None:
        export.unknown_architecture(lm.path, lm.architecture)


def _build(lm, recipes, staging: Path, threads: int, step) -> list[Variant]:
    from edgekit.lm import export
    from edgekit.lm.variants import RECIPES, build_variants, passes

    exporter = export.exporter_for(lm)
    how = "onnxruntime-genai's model builder" if exporter == "builder" else "torch.onnx"
    with step(f"building {', '.join(recipes)} with {how}"):
        built = build_variants(lm, {name: staging / name for name in recipes}, threads)
    if isinstance(built[BASELINE], EdgekitError):
        raise built[BASELINE]  # nothing can be measured against a reference that is not there
    rows = []
    for name in recipes:
        row = Variant(
            name,
            parent=None if name == BASELINE else BASELINE,
            passes=passes(lm, name),
            runtime=RUNTIME,
            notes=[RECIPES[name].description],
        )
        if isinstance(built[name], EdgekitError):
            row.error = str(built[name])
        else:
            row.file = name
            row.size_bytes = folder_size(built[name])
            row.sha256 = sha256_folder(built[name])
        rows.append(row)
    return rows


def _windows(lm, text: str, text_path) -> list:
    from edgekit.lm.drift import heldout_windows
    from edgekit.lm.tokenizer import Tokenizer

    window = min(WINDOW, lm.context_length or WINDOW)
    windows = heldout_windows(Tokenizer.from_folder(lm.path), text, window, MAX_WINDOWS)
    if not windows:
        raise EdgekitError(
            f"{text_path}: the held-out text is shorter than one window of {window} tokens; "
            "give a longer text with --data."
        )
    return windows


def _prune(lm, drop: int, windows, staging: Path, threads: int, step) -> list[Variant]:
    """depth-N (fp32 without the N layers whose removal hurts perplexity least) and its int4."""
    import tempfile

    from edgekit.lm.folder import read_lm_folder
    from edgekit.lm.prune import prune_depth
    from edgekit.lm.variants import RECIPES, build_variants, passes

    name = f"depth-{drop}"
    with tempfile.TemporaryDirectory(prefix=".edgekit-depth-", dir=staging.parent) as work:
        with step(f"choosing {drop} layer(s) to drop by perplexity") as update:
            rounds = prune_depth(lm.path, Path(work) / name, drop, windows, on_progress=update)
        pruned = read_lm_folder(Path(work) / name)
        wanted = {name: "fp32", f"{name}-int4": "int4"}
        with step(f"building {', '.join(wanted)}"):
            built = build_variants(
                pruned, {"fp32": staging / name, "int4": staging / f"{name}-int4"}, threads
            )
    settings = {"drop": drop, "dropped": [r["dropped"] for r in rounds], "rounds": rounds}
    rows = []
    for variant, recipe in wanted.items():
        row = Variant(
            variant,
            parent=BASELINE if recipe == "fp32" else name,
            passes=[{"name": "prune-depth", "settings": settings}, *passes(pruned, recipe)],
            runtime=RUNTIME,
            notes=[
                f"without decoder layer(s) {', '.join(str(r['dropped']) for r in rounds)} of "
                f"{lm.num_layers}; {RECIPES[recipe].description}"
            ],
        )
        if isinstance(built[recipe], EdgekitError):
            row.error = str(built[recipe])
        else:
            row.file, row.size_bytes = variant, folder_size(built[recipe])
            row.sha256 = sha256_folder(built[recipe])
        rows.append(row)
    return rows


def _drift(lm, rows, staging, text, text_path, threads, step) -> list[str]:
    from edgekit.lm.drift import lm_drift
    from edgekit.lm.logits import LogitsModel

    windows = _windows(lm, text, text_path)
    window = len(windows[0])
    prompts = [w[:PROMPT_TOKENS] for w in windows[:PROMPTS]]
    with step("measuring drift against fp32 on the held-out text") as update:
        reference = LogitsModel(staging / BASELINE, threads=threads)
        for row in rows:
            if row.error:
                continue
            update(row.name)
            try:
                row.accuracy = lm_drift(
                    reference,
                    LogitsModel(staging / row.name, threads=threads),
                    windows,
                    prompts,
                    new_tokens=GREEDY_TOKENS,
                )
            except Exception as exc:  # onnxruntime refuses the variant: a row with the reason
                if row.name == BASELINE:
                    raise
                row.error = f"onnxruntime could not run this variant for its drift: {exc}"
    return [
        f"drift against fp32 on {text_path}: {len(windows)} windows of {window} tokens "
        f"(perplexity, KLD and same top-1 at every position), greedy agreement over "
        f"{GREEDY_TOKENS} tokens from {len(prompts)} prompts of {PROMPT_TOKENS} tokens"
    ]


def _measure(rows, staging, options: LMOptions, threads: int, step, context: int | None) -> None:
    from edgekit.lm.bench import fill_row, measure_lm

    # llama-bench's prompt lengths, those that fit the model's context (the KV cache holds the
    # prompt and the first generated token)
    lengths = [n for n in PP_LENGTHS if context is None or n + 1 <= context]
    too_long = {
        f"pp{n}": f"a prompt of {n} tokens does not fit the model's context of {context} tokens"
        for n in PP_LENGTHS
        if n not in lengths
    }
    built = {r.name: staging / r.name for r in rows if not r.error}
    with step("benchmarking " + ", ".join(built)) as update:
        measured = measure_lm(
            built,
            threads=threads,
            prompt_lengths=lengths,
            min_time=options.min_time,
            max_time=options.max_time,
            on_progress=update,
        )
    for row in rows:
        if row.name in measured:
            fill_row(row, measured[row.name], too_long)


def _read_text(path: Path) -> str:
    try:
        return Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise EdgekitError(
            f"--data {path}: cannot read it as UTF-8 text ({exc}). For a language model, --data "
            "is held-out text (a .txt file) on which perplexity and KLD are measured."
        ) from None


def _source_note(lm) -> str:
    from edgekit.lm import export

    return f"{lm.architecture}: every variant was exported by {export.exporter_reason(lm)}"


def _model_json(lm) -> dict:
    return {
        "architecture": lm.architecture,
        "model_type": lm.model_type,
        "parameters": lm.parameters,
        "layers": lm.num_layers,
        "hidden_size": lm.hidden_size,
        "vocab_size": lm.vocab_size,
        "context_length": lm.context_length,
    }


def _physical_cores() -> int:
    from edgekit.benchmark.device import physical_cores

    return physical_cores()
