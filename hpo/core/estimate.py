"""What one trial of a spec may allocate, judged before any worker runs it.

Pure functions of the spec, the model's shape (its ``config.json``) and the operator's limits,
at the worst point of the search space (the largest batch, sequence length, rank, beams...):

- peak memory = weights + the largest of training (adapter with its gradient and Adam
  moments, activations ~ batch x seq x layers x width, logits batch x seq x vocab), evaluation
  (a forward pass of the evaluation batch) and generation (the key/value cache of
  ``GENERATION_BATCH`` prompts x beams, and their logits); only where the shape is known;
- spec-only caps that hold for any model: tokens in one forward pass, tokens per optimiser
  step, tokens one evaluation generates, and generated tokens per example trained.

Registration refuses a spec past them (``hpo.core.preflight``), naming each field that drives
the estimate; the workers generate in batches of the same ``GENERATION_BATCH``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from hpo.core.hyperparameters import BY_NAME
from hpo.core.settings import Settings
from hpo.core.spec import CategoricalDistribution, IntDistribution, StudySpec

GB = 2**30
GENERATION_BATCH = 16  # prompts a worker generates for at once
# Values a layer keeps for the backward pass, per token: ~10 of the width (norms, attention's
# inputs and outputs, residuals) and 4 of the MLP's (gate, up, activation, down's input); one
# width per layer with gradient checkpointing, plus one layer recomputed.
ACTIVATIONS_PER_WIDTH, ACTIVATIONS_PER_MLP = 10, 4
LOGIT_BYTES = 12  # float32 logits, their log-softmax and its gradient
ADAPTER_BYTES = 16  # float32 weight, gradient and two Adam moments per adapter parameter
DTYPE_BYTES = {"float32": 4, "float16": 2, "bfloat16": 2}

Loc = tuple[str, ...]


@dataclass(frozen=True)
class ModelShape:
    """The sizes of a transformer that set its memory."""

    layers: int
    hidden: int
    vocab: int
    heads: int
    kv_heads: int
    intermediate: int
    tied: bool = True
    dtype_bytes: int = 4

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> ModelShape | None:
        """The shape in a Hugging Face ``config.json`` (a multimodal one's ``text_config``),
        or None where it names no layers, width or vocabulary."""
        text = config.get("text_config")
        if isinstance(text, Mapping):
            config = {**config, **text}

        def size(*keys: str) -> int | None:
            found = next((config[k] for k in keys if k in config), None)
            ok = isinstance(found, int) and not isinstance(found, bool) and found > 0
            return found if ok else None

        layers = size("num_hidden_layers", "n_layer", "num_layers")
        hidden = size("hidden_size", "n_embd", "d_model")
        vocab = size("vocab_size")
        if layers is None or hidden is None or vocab is None:
            return None
        heads = size("num_attention_heads", "n_head") or 1
        dtype = config.get("torch_dtype", config.get("dtype"))
        return cls(
            layers=layers,
            hidden=hidden,
            vocab=vocab,
            heads=heads,
            kv_heads=size("num_key_value_heads") or heads,
            intermediate=size("intermediate_size", "n_inner", "ffn_dim") or 4 * hidden,
            tied=config.get("tie_word_embeddings", True) is not False,
            dtype_bytes=DTYPE_BYTES.get(str(dtype), 4),
        )

    @property
    def kv_width(self) -> int:
        return self.kv_heads * (self.hidden // self.heads)

    def parameters(self) -> int:
        attention = 2 * self.hidden * (self.hidden + self.kv_width)
        mlp = 3 * self.hidden * self.intermediate
        embeddings = self.vocab * self.hidden * (1 if self.tied else 2)
        return embeddings + self.layers * (attention + mlp)

    def adapter_inputs_outputs(self, targets: str) -> int:
        """Sum of in + out features over one layer's adapted linear modules."""
        attention = 2 * (2 * self.hidden) + 2 * (self.hidden + self.kv_width)
        mlp = 3 * (self.hidden + self.intermediate)
        return {"attention": attention, "mlp": mlp}.get(targets, attention + mlp)


# The built-in models (worker/builtin.py builds them; a unit test holds the two together).
BUILTIN_SHAPES = {
    "builtin:tiny-llama": ModelShape(2, 64, 77, 4, 2, 128),
    "builtin:tiny-encoder": ModelShape(2, 64, 77, 4, 4, 128),
}


@dataclass(frozen=True)
class Limits:
    """The operator's per-worker limits (``HPO_WORKER_MEMORY_GB``, ``HPO_MAX_*``)."""

    memory_bytes: int
    batch_tokens: int
    step_tokens: int
    generated_tokens: int
    generated_per_example: int

    @classmethod
    def from_settings(cls, settings: Settings) -> Limits:
        return cls(
            memory_bytes=int(settings.worker_memory_gb * GB),
            batch_tokens=settings.max_batch_tokens,
            step_tokens=settings.max_step_tokens,
            generated_tokens=settings.max_generated_tokens,
            generated_per_example=settings.max_generated_tokens_per_example,
        )


@dataclass(frozen=True)
class Problem:
    """A limit a spec passes: the fields that drive the value (JSON locs), what it is, the
    estimate and the limit, and the setting that holds the limit."""

    fields: tuple[Loc, ...]
    what: str
    estimate: float
    limit: float
    setting: str

    @property
    def unit(self) -> str:
        return "GB" if self.setting == "HPO_WORKER_MEMORY_GB" else "tokens"

    @property
    def message(self) -> str:
        shown = "{:,.3g}" if self.unit == "GB" else "{:,.0f}"
        return (
            f"{self.what}: {shown.format(self.estimate)} {self.unit} at the largest values the "
            f"spec allows, past {self.setting} = {shown.format(self.limit)}; fields: "
            f"{', '.join('.'.join(loc) for loc in self.fields)}."
        )


@dataclass(frozen=True)
class Worst:
    """The values each setting can take in a spec's trials (the largest is the worst), and
    where the spec sets it."""

    possible: dict[str, list[Any]]
    locs: dict[str, Loc]

    @classmethod
    def of(cls, spec: StudySpec) -> Worst:
        dists = spec.search.space.distributions()
        fixed = spec.train.training.values()
        possible: dict[str, list[Any]] = {}
        locs: dict[str, Loc] = {}
        for name, hp in BY_NAME.items():
            dist = dists.get(name)
            if isinstance(dist, CategoricalDistribution | IntDistribution):
                possible[name] = [hp.default if v is None else v for v in dist.values()]
            elif dist is not None:
                possible[name] = [dist.low, dist.high]
            else:
                possible[name] = [fixed.get(name, hp.default)]
            locs[name] = ("search", "space", name) if dist else ("train", "training", name)
        return cls(possible, locs)

    def number(self, name: str, unset: int = 1) -> int:
        """The largest value of a numeric setting; ``unset`` where it is None (a library's
        default, e.g. num_beams 1)."""
        numbers = [v for v in self.possible[name] if isinstance(v, int | float)]
        return int(max(numbers)) if numbers else unset


EVAL_BATCH: Loc = ("train", "evaluation", "batch_size")
EVERY: Loc = ("train", "evaluation", "every_examples")
MAX_EXAMPLES: Loc = ("train", "evaluation", "generation", "max_examples")
REPORT_EXAMPLES: Loc = ("train", "evaluation", "generation", "report_examples")
MODEL: Loc = ("train", "model", "name_or_path")
MODEL_DTYPE: Loc = ("train", "model", "dtype")


def eval_batch(spec: StudySpec, worst: Worst) -> int:
    """The evaluation batch a worker uses (its default: max(32, the training batch))."""
    batch = worst.number("per_device_train_batch_size")
    return spec.train.evaluation.batch_size or max(32, batch)


@dataclass(frozen=True)
class Memory:
    """A trial's estimated memory in bytes: the weights, and what each phase adds to them
    (training and evaluation are 0 in a decode study, generation without a generation
    metric)."""

    weights: int
    training: int
    evaluation: int
    generation: int

    @property
    def peak(self) -> int:
        return self.weights + max(self.training, self.evaluation, self.generation)


def _adapter_parameters(shape: ModelShape, worst: Worst) -> int:
    rank = worst.number("lora_r")
    if "adalora" in worst.possible["lora_method"]:  # it starts above lora_r and prunes down
        rank = max(rank, worst.number("adalora_init_r", unset=rank + rank // 2))
    targets = max(shape.adapter_inputs_outputs(t) for t in worst.possible["lora_target_modules"])
    return rank * shape.layers * targets


def memory(spec: StudySpec, shape: ModelShape, worst: Worst | None = None) -> Memory:
    """The estimated memory of a trial of ``spec`` at the worst point of its search space."""
    worst = worst or Worst.of(spec)
    dtype = spec.train.model.dtype
    width = shape.dtype_bytes if dtype == "auto" else DTYPE_BYTES[dtype]
    seq = worst.number("max_seq_length")
    # Classification logits are batch x labels: nothing beside a vocabulary's.
    vocab = shape.vocab if spec.train.model.task == "causal-lm" else 0
    per_layer = ACTIVATIONS_PER_WIDTH * shape.hidden + ACTIVATIONS_PER_MLP * shape.intermediate
    training = evaluation = generation = 0
    if spec.train.mode == "fine-tune":
        tokens = worst.number("per_device_train_batch_size") * seq
        if False in worst.possible["gradient_checkpointing"]:
            kept = shape.layers * per_layer
        else:
            kept = shape.layers * shape.hidden + per_layer
        training = (
            _adapter_parameters(shape, worst) * ADAPTER_BYTES
            + tokens * kept * width
            + tokens * vocab * LOGIT_BYTES
        )
        evaluation = eval_batch(spec, worst) * seq * (per_layer * width + vocab * 4)
    if spec.search.objective.generates:
        rows = GENERATION_BATCH * worst.number("num_beams")
        cached = rows * (seq + worst.number("max_new_tokens"))
        generation = (
            cached * shape.layers * 2 * shape.kv_width * width  # the key/value cache
            + rows * seq * per_layer * width  # the prompts' forward pass, a layer at a time
            + rows * shape.vocab * 4 * 2  # each step's last logits and their softmax
        )
    return Memory(shape.parameters() * width, training, evaluation, generation)


def problems(spec: StudySpec, shape: ModelShape | None, limits: Limits) -> list[Problem]:
    """Every limit a trial of ``spec`` can pass; the memory estimate only where the model's
    ``shape`` is known."""
    worst = Worst.of(spec)
    found = _caps(spec, worst, limits)
    if shape is not None:
        found += _memory(spec, shape, worst, limits)
    return found


def _caps(spec: StudySpec, worst: Worst, limits: Limits) -> list[Problem]:
    loc = worst.locs
    batch, seq = worst.number("per_device_train_batch_size"), worst.number("max_seq_length")
    batch_loc, seq_loc = loc["per_device_train_batch_size"], loc["max_seq_length"]
    checked: list[Problem] = []
    if spec.train.mode == "fine-tune":
        accumulation = worst.number("gradient_accumulation_steps")
        checked += [
            Problem(
                (batch_loc, seq_loc),
                "tokens in one training batch (batch x max_seq_length)",
                batch * seq,
                limits.batch_tokens,
                "HPO_MAX_BATCH_TOKENS",
            ),
            Problem(
                (EVAL_BATCH, seq_loc),
                "tokens in one evaluation batch (evaluation.batch_size, default max(32, batch), "
                "x max_seq_length)",
                eval_batch(spec, worst) * seq,
                limits.batch_tokens,
                "HPO_MAX_BATCH_TOKENS",
            ),
            Problem(
                (batch_loc, loc["gradient_accumulation_steps"], seq_loc),
                "tokens per optimiser step (batch x gradient_accumulation_steps x max_seq_length)",
                batch * accumulation * seq,
                limits.step_tokens,
                "HPO_MAX_STEP_TOKENS",
            ),
        ]
    if spec.search.objective.generates:
        checked += _generation_caps(spec, worst, limits)
    return [problem for problem in checked if problem.estimate > problem.limit]


def _generation_caps(spec: StudySpec, worst: Worst, limits: Limits) -> list[Problem]:
    generation, loc = spec.train.evaluation.generation, worst.locs
    answer = worst.number("max_new_tokens") * worst.number("num_beams")
    answer_locs = (loc["max_new_tokens"], loc["num_beams"])
    report = generation.report_limit() if spec.train.mode == "fine-tune" else 0
    prompts = MAX_EXAMPLES if generation.at_every_report else REPORT_EXAMPLES
    return [
        Problem(
            (MAX_EXAMPLES, *answer_locs),
            "tokens one evaluation generates (max_examples x max_new_tokens x num_beams)",
            generation.max_examples * answer,
            limits.generated_tokens,
            "HPO_MAX_GENERATED_TOKENS",
        ),
        Problem(
            (prompts, EVERY, *answer_locs),
            "tokens generated per example trained (prompts per report x max_new_tokens x "
            "num_beams / every_examples)",
            report * answer / spec.train.evaluation.every_examples,
            limits.generated_per_example,
            "HPO_MAX_GENERATED_TOKENS_PER_EXAMPLE",
        ),
    ]


def _memory(spec: StudySpec, shape: ModelShape, worst: Worst, limits: Limits) -> list[Problem]:
    estimate, limit = memory(spec, shape, worst), limits.memory_bytes
    if estimate.weights > limit:  # whatever the rest of the spec says
        return [
            Problem(
                (MODEL, MODEL_DTYPE),
                "the model's weights",
                estimate.weights / GB,
                limit / GB,
                "HPO_WORKER_MEMORY_GB",
            )
        ]
    loc, seq = worst.locs, worst.locs["max_seq_length"]
    phases = {
        "training": (
            estimate.training,
            (loc["per_device_train_batch_size"], seq, loc["lora_r"]),
        ),
        "evaluation": (estimate.evaluation, (EVAL_BATCH, seq)),
        "generation": (estimate.generation, (loc["max_new_tokens"], loc["num_beams"], seq)),
    }
    return [
        Problem(
            fields,
            f"a trial's estimated peak memory in {phase} ({estimate.weights / GB:.3g} GB of "
            f"weights + {part / GB:.4g} GB)",
            (estimate.weights + part) / GB,
            limit / GB,
            "HPO_WORKER_MEMORY_GB",
        )
        for phase, (part, fields) in phases.items()
        if estimate.weights + part > limit
    ]
