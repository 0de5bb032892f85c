"""Every user-attribute key this project keeps on Optuna trials and studies (``KEYS``),
what a retry starts without (``OUTCOME_ATTRS``), and the digits and limits writers round and
cut to."""

from __future__ import annotations

# segment
UNTIL_ATTR = "hpo_until"
CONTINUES_ATTR = "hpo_continues"
PAUSED_AT_ATTR = "hpo_paused_at"
# A segment that gave its worker up before its rung (preempted, its study paused or stopped):
# its state kept, a continuation queued; not a result, so no budget counts it.
YIELDED_ATTR = "hpo_yielded"
COOLED_ATTR = "hpo_cooled_score"
# outcome
FAIL_REASON_ATTR = "fail_reason"
PRUNE_REASON_ATTR = "prune_reason"
ERROR_ATTR = "error"
RETRIED_FROM_ATTR = "retried_from"
# A PRUNED copy of an out-of-memory trial that only tells samplers the config is infeasible;
# it is not a trial that ran and does not count against the budget.
INFEASIBLE_RECORD_ATTR = "infeasible_record_of"
ARTIFACT_ERROR_SUFFIX = "_error"  # "<artifact kind>_error": why an artifact was not stored
# cost
DEVICE_SECONDS_ATTR = "device_seconds"
GPU_SECONDS_ATTR = "gpu_seconds"
SETUP_SECONDS_ATTR = "setup_seconds"
TRAIN_SECONDS_ATTR = "train_seconds"
EVAL_SECONDS_ATTR = "eval_seconds"
GENERATION_SECONDS_ATTR = "generation_seconds"
EXAMPLES_SEEN_ATTR = "examples_seen"
# What a segment trained (a continuation only the rest): cost on the fidelity axis.
EXAMPLES_TRAINED_ATTR = "examples_trained"
TOKENS_SEEN_ATTR = "tokens_seen"
PEAK_MEMORY_ATTR = "peak_memory_mb"
# lineage
SLOT_ATTR = "hpo_pbt_slot"
LINEAGE_ATTR = "hpo_pbt_lineage"
RESUMED_VALUE_ATTR = "resumed_value"
INITIAL_LOSS_ATTR = "initial_train_loss"
# run
WORKER_ATTR = "worker"
HOSTNAME_ATTR = "hostname"
DEVICE_ATTR = "device"
# bf16, fp16 and use_cpu as the trial's Trainer ran (its device's defaults resolved)
PRECISION_ATTR = "precision"
FINAL_LOSS_ATTR = "final_train_loss"
EVAL_LOSS_CURVE_ATTR = "eval_loss_curve"
SAMPLE_ANSWER_ATTR = "sample_answer"
# The final score of the study's tie-break (``objective.tie_break``, lower better): among
# trials of equal value the lowest wins.
TIE_BREAK_ATTR = "tie_break_score"
# LoRA targets resolved on the model ("attention" -> module names).
RESOLVED_TARGETS_ATTR = "lora_target_modules_resolved"
# An AdaLoRA trial's rank per module where it ended.
RANK_PATTERN_ATTR = "adalora_rank_pattern"
# The first trial of every decode study: greedy decoding (no searched setting applies), the
# baseline a searched setting must beat. Earliest among equals, it stays the best on a tie.
GREEDY_ATTR = "greedy_baseline"
ENQUEUED_BY_ATTR = "enqueued_by"
# An enqueued warm-start trial: the earlier study its configuration came from.
WARM_START_ATTR = "warm_start_from"
# study user attributes
OWNER_ATTR = "owner"
# A warm-started study's consensus ranking of the earlier studies' configurations (params,
# best first): what its workers try while the study has no result of its own.
WARM_START_RANKING_ATTR = "warm_start_ranking"
# ... and each ranked configuration's consensus score (0 the sources' best .. 1 their worst):
# the values of the prior its TPE is fitted to (``hpo.core.prior_tpe``).
WARM_START_SCORES_ATTR = "warm_start_scores"
# A warm-started study's source studies, named and automatic, in the order they seed it (empty:
# nothing matched, the study started cold).
WARM_START_SOURCES_ATTR = "warm_start_sources"
OBJECTIVE_ATTR = "objective"
FIDELITY_ATTR = "fidelity"
FIDELITY = "step = training examples seen"
BASELINE_PREFIX = "baseline_"  # + a metric: the untuned model's score

# What a trial says about its own end; a retry starts without them.
OUTCOME_ATTRS = (
    FAIL_REASON_ATTR,
    ERROR_ATTR,
    PRUNE_REASON_ATTR,
    PAUSED_AT_ATTR,
    YIELDED_ATTR,
    COOLED_ATTR,
)
# Every fixed key above (scores are keyed by metric name, artifact errors by kind).
KEYS = frozenset(
    {
        UNTIL_ATTR,
        CONTINUES_ATTR,
        PAUSED_AT_ATTR,
        YIELDED_ATTR,
        COOLED_ATTR,
        FAIL_REASON_ATTR,
        PRUNE_REASON_ATTR,
        ERROR_ATTR,
        RETRIED_FROM_ATTR,
        INFEASIBLE_RECORD_ATTR,
        DEVICE_SECONDS_ATTR,
        GPU_SECONDS_ATTR,
        SETUP_SECONDS_ATTR,
        TRAIN_SECONDS_ATTR,
        EVAL_SECONDS_ATTR,
        GENERATION_SECONDS_ATTR,
        EXAMPLES_SEEN_ATTR,
        EXAMPLES_TRAINED_ATTR,
        TOKENS_SEEN_ATTR,
        PEAK_MEMORY_ATTR,
        SLOT_ATTR,
        LINEAGE_ATTR,
        RESUMED_VALUE_ATTR,
        INITIAL_LOSS_ATTR,
        WORKER_ATTR,
        HOSTNAME_ATTR,
        DEVICE_ATTR,
        PRECISION_ATTR,
        FINAL_LOSS_ATTR,
        EVAL_LOSS_CURVE_ATTR,
        TIE_BREAK_ATTR,
        SAMPLE_ANSWER_ATTR,
        RESOLVED_TARGETS_ATTR,
        RANK_PATTERN_ATTR,
        GREEDY_ATTR,
        ENQUEUED_BY_ATTR,
        WARM_START_ATTR,
        OWNER_ATTR,
        WARM_START_RANKING_ATTR,
        WARM_START_SCORES_ATTR,
        WARM_START_SOURCES_ATTR,
        OBJECTIVE_ATTR,
        FIDELITY_ATTR,
        BASELINE_PREFIX,
    }
)

SECONDS_DIGITS = 4
SCORE_DIGITS = 6
MAX_SAMPLE_CHARS = 500
