"""Small language models: a Hugging Face causal-LM folder in, variants out, measured on the device.

An "LM variant folder" is onnxruntime-genai's layout: genai_config.json, model.onnx (+ .data) with
a KV cache, and the tokenizer files.

Device side (torch-free: numpy, onnxruntime, onnxruntime-genai, tokenizers):
  folder.py     the folder a user has (config.json, *.safetensors, tokenizer.json) -> LMFolder
  tokenizer.py  encode and decode with the folder's tokenizer.json
  logits.py     a variant folder run with plain onnxruntime: sequence logits, greedy tokens
  drift.py      a variant against the float model: perplexity, KL divergence and same top-1
                (llama.cpp's perplexity tool's figures), greedy agreement
  bench.py      prompt and generation tokens/s, time to first token, peak RSS
Host side (imports transformers/torch lazily):
  export.py, variants.py, pipeline.py   the variant folders and `edgekit optimize` on an LM
"""
