"""``hpo report``: one self-contained HTML page of a study, readable offline: every trial's
curve on the fidelity axis, the objective over trials, parameter importances (Optuna's own
plot functions, on plotly) and the best configuration.

plotly.js is inlined once (about 4.6 MB) and each figure placed after it, so the page needs
no network and no server.
"""

from __future__ import annotations

import html
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import optuna
import plotly.graph_objects as go
from optuna.trial import TrialState, create_trial
from plotly.offline import get_plotlyjs

from hpo.core import records
from hpo.core.factory import optuna_distributions
from hpo.core.schemas import TrialPublic
from hpo.core.spec import StudySpec
from hpo.plots import in_memory_study

STATES = {"complete": TrialState.COMPLETE, "pruned": TrialState.PRUNED}


def _study(spec: StudySpec, trials: Sequence[TrialPublic]) -> optuna.Study:
    """An in-memory study of the trials that ended with a result, with their curves."""
    distributions = optuna_distributions(spec.search)
    study = in_memory_study(spec)
    for t in trials:
        state = STATES.get(t.state)
        if state is None or records.is_infeasible_record(t):
            continue
        study.add_trial(
            create_trial(
                state=state,
                value=t.value if state == TrialState.COMPLETE else None,
                params={k: v for k, v in t.params.items() if k in distributions},
                distributions={k: distributions[k] for k in t.params if k in distributions},
                intermediate_values=t.intermediate_values,
            )
        )
    return study


def _figures(study: optuna.Study, metric: str) -> list[tuple[str, go.Figure | str]]:
    """Each section's title and its figure, or why it cannot be drawn yet."""
    from optuna import visualization as plots

    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    found: list[tuple[str, go.Figure | str]] = []
    curves = plots.plot_intermediate_values(study)
    curves.update_layout(xaxis_title="training examples seen", yaxis_title=metric)
    found.append(("curves", curves))
    history = plots.plot_optimization_history(study, target_name=metric)
    found.append(("objective over trials", history))
    varied = {
        k for t in complete for k in t.params if len({u.params.get(k) for u in complete}) > 1
    }
    if len(complete) >= 2 and varied:
        importances = plots.plot_param_importances(study, target_name=metric)
        found.append(("parameter importances", importances))
    else:
        found.append(("parameter importances", "needs two complete trials that differ"))
    return found


def report_html(
    spec: StudySpec,
    trials: Sequence[TrialPublic],
    *,
    best: TrialPublic | None,
    baseline: float | None = None,
) -> str:
    """The page: plotly.js once, then the best configuration and each figure."""
    metric = spec.search.objective.metric
    study = _study(spec, trials)
    sections = [_best_section(metric, best, baseline)]
    for i, (title, figure) in enumerate(_figures(study, metric)):
        if isinstance(figure, str):
            body = f"<p>{html.escape(figure)}</p>"
        else:
            body = figure.to_html(full_html=False, include_plotlyjs=False, div_id=f"plot-{i}")
        sections.append(f"<section><h2>{html.escape(title)}</h2>{body}</section>")
    name = html.escape(spec.name)
    return (
        '<!doctype html>\n<html><head><meta charset="utf-8">'
        f"<title>{name}: hpo report</title>"
        "<style>body{font-family:sans-serif;margin:2em;max-width:1100px}"
        "td,th{padding:2px 12px;text-align:left}</style>"
        f'<script type="text/javascript">{get_plotlyjs()}</script>'
        f"</head><body><h1>study {name}</h1>{''.join(sections)}</body></html>\n"
    )


def _best_section(metric: str, best: TrialPublic | None, baseline: float | None) -> str:
    if best is None:
        return "<section><h2>best configuration</h2><p>no trial has completed yet</p></section>"
    rows: list[tuple[str, Any]] = [(metric, best.value), ("trial", best.number)]
    if baseline is not None:
        rows.append((f"{metric}, untuned model", baseline))
    rows += sorted(best.params.items())
    cells = "".join(
        f"<tr><th>{html.escape(str(k))}</th><td>{html.escape(json.dumps(v))}</td></tr>"
        for k, v in rows
    )
    return f'<section><h2>best configuration</h2><table id="best">{cells}</table></section>'


def write_report(
    spec: StudySpec,
    trials: Sequence[TrialPublic],
    out: Path,
    *,
    best: TrialPublic | None,
    baseline: float | None = None,
) -> Path:
    out.write_text(report_html(spec, trials, best=best, baseline=baseline), encoding="utf-8")
    return out
