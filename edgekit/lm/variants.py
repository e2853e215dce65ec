"""The LM variants edgekit makes, as recipes: how each is exported and how its weights are
quantized, by the builder (onnxruntime-genai's MatMulNBits options) or, on the torch path, by
onnxruntime's MatMulNBitsQuantizer with the same settings. Host side (edgekit.lm.export)."""

from __future__ import annotations

import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from edgekit.errors import EdgekitError
from edgekit.lm import export

# accuracy_level 4: MatMulNBits quantizes its activations to int8 and runs the product in int8
# on CPUs with VNNI / SDOT / i8mm (fp32 elsewhere), the fast path llama.cpp's Q4/Q8 dot products use.
ACCURACY_LEVEL = 4
# Block size and symmetry of int4, measured (builder, 2 threads, KLD against fp32 on held-out
# text, tg128 interleaved) on random-weight Llamas, 2 layers x 64 wide and 6 x 512: block 32 drifted
# least (KLD 0.026 / 0.19; block 64: 0.030 / 0.23; block 128: 0.032 / 0.26) and block 128 generated
# fastest (1.41x block 32's tg128 on the 6 x 512, rounds from 1.05x to 1.95x). Asymmetric (uint4
# with zero points) lowered KLD by 9% at block 32 (and by 5-9% or raised it by 6-9% at 64/128) but
# generated 0.92x as fast. So int4 is block 32 symmetric (llama.cpp's Q4_0 block) and int4-b128
# the fast one: the drift budget decides between them on the model at hand.
INT4_BLOCK_SIZE = 32
INT4_FAST_BLOCK_SIZE = 128


@dataclass(frozen=True)
class Recipe:
    name: str
    bits: int | None  # weight bits of the MatMuls (None: float)
    description: str
    builder_options: dict = field(default_factory=dict)  # --extra_options of the builder
    mixed: bool = False  # the sensitive MatMuls at 8 bits

    @property
    def precision(self) -> str:
        return {None: "fp32", 8: "int8", 4: "int4"}[self.bits]


# Every builder variant computes the LM head for the last position only in a prefill (all that
# generation reads; edgekit.lm.logits restores every position for drift): a 512-token prefill of a
# Qwen2.5-0.5B shape otherwise holds 512 x 151936 float32 logits, 311 MB. Its int4 in three
# interleaved `edgekit bench` runs (2 threads, a busy machine): peak RSS 980 -> 664 * 10^6 bytes
# in each (the peak is then the load), pp512 1.3-2.4x, tg128 no difference beyond the noise. The
# torch path ignores these builder-only options.
_FLOAT = {"prune_lm_head": "true"}
_QUANT = {**_FLOAT, "accuracy_level": ACCURACY_LEVEL}
_INT4 = {**_QUANT, "block_size": INT4_BLOCK_SIZE, "is_symmetric": "true"}
# int4 and int4-b128 also quantize the token embedding (GatherBlockQuantized: int4, the MatMuls'
# blocks). A model with tied embeddings shares the lm_head's int4 weights there anyway (the
# builder's default); an untied one kept a float32 table of vocabulary x hidden (545 MB at
# 151936 x 896). Measured on the untied 2-layer x 64 test Llama (random weights, KLD against fp32
# on held-out text): KLD 0.0239 -> 0.0284, same top-1 0.627 -> 0.587; the shipped tiny-lm (tied)
# is unchanged. int4-mixed keeps the embedding float, as it keeps the sensitive MatMuls at int8.
_INT4_EMBEDDING = {**_INT4, "op_types_to_quantize": "MatMul/Gather"}
BUILDER_ONLY = ("prune_lm_head", "op_types_to_quantize")
RECIPES = {
    r.name: r
    for r in (
        Recipe("fp32", None, "float32 weights and activations: the reference", _FLOAT),
        Recipe(
            "int8",
            8,
            "int8 weight-only (MatMulNBits, block 32, symmetric)",
            {**_QUANT, "block_size": 32, "is_symmetric": "true"},
        ),
        Recipe(
            "int4",
            4,
            f"int4 weight-only (MatMulNBits, block {INT4_BLOCK_SIZE}, symmetric; builder: the "
            "token embedding too, GatherBlockQuantized)",
            _INT4_EMBEDDING,
        ),
        Recipe(
            "int4-b128",
            4,
            f"int4 weight-only (MatMulNBits, block {INT4_FAST_BLOCK_SIZE}, symmetric; builder: "
            "the token embedding too): fewer scales to read, faster, more drift",
            {**_INT4_EMBEDDING, "block_size": INT4_FAST_BLOCK_SIZE},
        ),
        Recipe(
            "int4-mixed",
            4,
            "int4 weight-only with the most sensitive MatMuls at int8, as llama.cpp's Q4_K_M "
            "mixes (builder: lm_head, the first and last eighth of the layers and every third "
            "layer's attention and down projections, k-quant scales; torch path: lm_head and "
            "the first and last layers)",
            {**_INT4, "algo_config": "k_quant_mixed"},
            mixed=True,
        ),
    )
}


def build_variant(folder, out_dir, recipe: str, threads: int) -> Path:
    """The LM variant folder `out_dir` for `recipe` (a key of RECIPES) from the causal-LM folder
    (an edgekit.lm.folder.LMFolder). `threads`: the CPU threads the export and quantization use."""
    result = build_variants(folder, {recipe: out_dir}, threads)[recipe]
    if isinstance(result, EdgekitError):
        raise result
    return result


def build_variants(folder, out_dirs: dict, threads: int) -> dict:
    """Several variants at once ({recipe: out_dir}): the builder's in one process. Returns
    {recipe: the folder made, or the EdgekitError saying why not}."""
    unknown = [r for r in out_dirs if r not in RECIPES]
    if unknown:
        raise EdgekitError(f"Unknown LM recipe {unknown[0]!r}; edgekit makes {', '.join(RECIPES)}.")
    if export.exporter_for(folder) == "builder":
        jobs = {
            r: (out_dir, RECIPES[r].precision, RECIPES[r].builder_options)
            for r, out_dir in out_dirs.items()
        }
        failed = export.build_with_builder(folder.path, jobs, threads)
        return {r: failed[r] or Path(out_dirs[r]) for r in out_dirs}
    # torch.onnx exports the float model once; each recipe quantizes a copy of it
    first = Path(next(iter(out_dirs.values())))
    with tempfile.TemporaryDirectory(prefix=".edgekit-export-", dir=first.parent) as work:
        fp32 = Path(work) / "fp32"
        export.export_with_torch(folder.path, fp32, folder.architecture, threads)
        for r, out_dir in out_dirs.items():
            shutil.copytree(fp32, out_dir)
            if RECIPES[r].bits is not None:
                _quantize_onnx(Path(out_dir) / "model.onnx", RECIPES[r], folder.num_layers)
    return {r: Path(out_dir) for r, out_dir in out_dirs.items()}


def passes(folder, recipe: str) -> list[dict]:
    """What made the variant, for the report's `passes`."""
    r = RECIPES[recipe]
    exporter = export.exporter_for(folder)
    export_settings = {"exporter": exporter}
    if exporter == "builder":  # every builder variant, fp32 too, computes the head this way
        export_settings.update((k, v) for k, v in r.builder_options.items() if k in _FLOAT)
    made = [{"name": "export-lm", "settings": export_settings}]
    if r.bits is not None:
        settings = {"bits": r.bits, **r.builder_options}
        if exporter != "builder":
            settings = {k: v for k, v in settings.items() if k not in BUILDER_ONLY}
        made.append({"name": f"quantize-{r.precision}", "settings": settings})
    return made


def _quantize_onnx(path: Path, r: Recipe, layers: int) -> None:
    """The torch path's weight-only quantization: onnxruntime's MatMulNBitsQuantizer, the
    kernel the builder uses. A mixed recipe quantizes the sensitive MatMuls (lm_head, the first
    and last layers) in a second pass at 8 bits."""
    import logging

    import onnx
    from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer

    # it logs every node it looks at at INFO level, on a handler of its own
    logging.getLogger("onnxruntime.quantization.matmul_nbits_quantizer").setLevel(logging.WARNING)
    model = onnx.load(str(path))
    matmuls = [n.name for n in model.graph.node if n.op_type == "MatMul"]
    sensitive = [
        name
        for name in matmuls
        if "lm_head" in name or "layers.0/" in name or f"layers.{layers - 1}/" in name
    ]
    options = r.builder_options
    steps = [(r.bits, sensitive if r.mixed else [])]
    if r.mixed:
        steps.append((8, []))
    for bits, exclude in steps:
        quantizer = MatMulNBitsQuantizer(
            model,
            bits=bits,
            block_size=int(options.get("block_size", 32)),
            is_symmetric=options.get("is_symmetric", "true") == "true",
            accuracy_level=ACCURACY_LEVEL,
            nodes_to_exclude=exclude,
        )
        quantizer.process()
        model = quantizer.model.model
    path.unlink()
    onnx.save_model(model, str(path), save_as_external_data=True, location="model.onnx.data")
