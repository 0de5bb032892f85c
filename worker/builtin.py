"""Built-in tiny models and datasets, made locally and deterministically (no network).

``builtin:tiny-llama`` (a Llama-architecture causal LM), ``builtin:tiny-encoder`` (a BERT
classifier), ``builtin:demo-text`` and ``builtin:demo-classification`` resolve to ordinary
``from_pretrained`` folders and JSONL files under the cache folder, built on first use.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from hpo.core.spec import BUILTIN_PREFIX

VERSION = "v2"
NUMBERS = [
    "zero",
    "one",
    "two",
    "three",
    "four",
    "five",
    "six",
    "seven",
    "eight",
    "nine",
    "ten",
    "eleven",
    "twelve",
]
NAMES = ["ada", "bob", "cy", "dee", "eve", "fay", "gus", "hal", "ivy", "jo", "kim", "lou"]
NOUNS = ["apples", "books", "coins", "cups", "keys", "pens", "plums", "rings", "shells", "stones"]
GOOD = ["great", "fine", "lovely", "superb", "pleasant", "excellent", "charming"]
BAD = ["awful", "dull", "broken", "poor", "boring", "terrible", "clumsy"]
THINGS = ["film", "meal", "book", "hotel", "phone", "song", "chair", "trip"]
SPECIALS = ["[PAD]", "[UNK]", "[BOS]", "[EOS]", "[CLS]", "[SEP]"]


def _demo_text(rng: random.Random) -> str:
    a, b = rng.sample(NAMES, 2)
    noun = rng.choice(NOUNS)
    n = rng.randint(3, 12)
    m = rng.randint(0, n)
    if rng.random() < 0.5:
        return (
            f"{a} has {NUMBERS[n]} {noun} and gives {NUMBERS[m]} to {b} , "
            f"so {a} has {NUMBERS[n - m]} {noun} ."
        )
    start = rng.randint(0, 6)
    return "counting : " + " ".join(NUMBERS[start : start + rng.randint(4, 7)]) + " ."


def _demo_classification(rng: random.Random) -> dict[str, object]:
    label = rng.randint(0, 1)
    words = GOOD if label else BAD
    thing = rng.choice(THINGS)
    adjectives = rng.sample(words, 2)
    filler = rng.choice(["", "really ", "quite ", "very "])
    return {
        "text": f"the {thing} was {filler}{adjectives[0]} and {adjectives[1]} .",
        "label": label,
    }


def _vocabulary() -> list[str]:
    words = {w for line in _rows("demo-text") for w in str(line["text"]).split()}
    words |= {w for line in _rows("demo-classification") for w in str(line["text"]).split()}
    return SPECIALS + sorted(words)


def _rows(name: str, n: int = 2000) -> list[dict[str, object]]:
    rng = random.Random(1234)
    if name == "demo-text":
        return [{"text": _demo_text(rng)} for _ in range(n)]
    return [_demo_classification(rng) for _ in range(n)]


# kind -> the special tokens around every sequence, with their roles. Like Llama's own
# tokenizer, ours opens with BOS only: TRL appends the EOS that a fine-tune learns to stop at.
FRAMES = {
    "llama": (("[BOS]", "bos_token"), ("[EOS]", "eos_token"), "[BOS] $A"),
    "bert": (("[CLS]", "cls_token"), ("[SEP]", "sep_token"), "[CLS] $A [SEP]"),
}


def _tokenizer(kind: str):  # -> PreTrainedTokenizerFast
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab = {w: i for i, w in enumerate(_vocabulary())}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    (first, first_role), (last, last_role), frame = FRAMES[kind]
    tok.post_processor = processors.TemplateProcessing(
        single=frame, special_tokens=[(first, vocab[first]), (last, vocab[last])]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        pad_token="[PAD]",
        unk_token="[UNK]",
        **{first_role: first, last_role: last},
    )


def build_llama(out: Path, **sizes: int) -> None:
    """Save a randomly initialised (seed 0) Llama with the built-in tokenizer to ``out``.

    ``sizes`` override LlamaConfig's sizes (hidden_size, num_hidden_layers, ...).
    """
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    tokenizer = _tokenizer("llama")
    shape: dict[str, Any] = {
        "hidden_size": 64,
        "intermediate_size": 128,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "max_position_embeddings": 256,
        **sizes,
    }
    config = LlamaConfig(
        **shape,
        vocab_size=len(tokenizer),
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=True,
    )
    torch.manual_seed(0)
    LlamaForCausalLM(config).save_pretrained(out)
    tokenizer.save_pretrained(out)


def _build_tiny_encoder(out: Path) -> None:
    import torch
    from transformers import BertConfig, BertForSequenceClassification

    tokenizer = _tokenizer("bert")
    config = BertConfig(
        vocab_size=len(tokenizer),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        max_position_embeddings=128,
        pad_token_id=tokenizer.pad_token_id,
    )
    config.num_labels = 2
    torch.manual_seed(0)
    BertForSequenceClassification(config).save_pretrained(out)
    tokenizer.save_pretrained(out)


def _write_jsonl(name: str) -> Callable[[Path], None]:
    def build(out: Path) -> None:
        out.mkdir(parents=True)
        with (out / "data.jsonl").open("w") as f:
            for row in _rows(name):
                f.write(json.dumps(row) + "\n")

    return build


BUILDERS: dict[str, tuple[Callable[[Path], None], str]] = {
    "tiny-llama": (build_llama, ""),
    "tiny-encoder": (_build_tiny_encoder, ""),
    "demo-text": (_write_jsonl("demo-text"), "data.jsonl"),
    "demo-classification": (_write_jsonl("demo-classification"), "data.jsonl"),
}


def is_builtin(name: str) -> bool:
    return name.startswith(BUILTIN_PREFIX)


def resolve(name: str, cache_dir: Path) -> Path:
    """The local path of a built-in model folder or dataset file, building it if needed.

    Concurrent workers may race to build: each builds in a temporary folder and renames it
    into place; the first rename wins.
    """
    key = name.removeprefix(BUILTIN_PREFIX)
    if key not in BUILDERS:
        raise ValueError(f"unknown built-in {name!r}; known ones are {sorted(BUILDERS)}")
    build, inner = BUILDERS[key]
    target = cache_dir / "builtin" / f"{key}-{VERSION}"
    if not target.exists():
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{key}-"))
        try:
            build(tmp / "out")
            os.rename(tmp / "out", target)
        except OSError:
            if not target.exists():
                raise
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return target / inner if inner else target
