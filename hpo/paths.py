"""Where a spec may point: datasets under ``HPO_DATA_ROOTS``; models under ``HPO_MODEL_ROOTS``
or hub-style ids. Paths are resolved (symlinks followed) before the check, and any ``..``
segment is refused outright.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from hpo.errors import SpecError
from hpo.settings import Settings
from hpo.spec import StudySpec

BUILTIN_PREFIX = "builtin:"
HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]{0,95}(/[A-Za-z0-9][\w.-]{0,95})?$")


def _inside(path: str, roots: list[Path]) -> bool:
    real = Path(os.path.realpath(path))
    resolved = [Path(os.path.realpath(root)) for root in roots]
    return any(real == root or root in real.parents for root in resolved)


def _check_local(path: str, roots: list[Path], loc: tuple[str, ...], what: str) -> None:
    if ".." in Path(path).parts:
        raise SpecError(f"{what} path must not contain '..', but got {path!r}.", loc=loc)
    if not _inside(path, roots):
        raise SpecError(
            f"{what} path {path!r} is outside the allowed roots {[str(r) for r in roots]}.",
            loc=loc,
        )


def check_spec_paths(spec: StudySpec, settings: Settings) -> None:
    """Raise SpecError when the spec's dataset or model points outside the allowed places."""
    data = spec.dataset.path
    if not data.startswith(BUILTIN_PREFIX):
        _check_local(data, settings.data_roots, ("dataset", "path"), "dataset")
    model = spec.model.name_or_path
    if model.startswith(BUILTIN_PREFIX):
        return
    if HUB_ID.match(model) and ".." not in model and not os.path.exists(model):
        return  # a hub id: from_pretrained resolves it through the local HF cache or the hub
    _check_local(model, settings.model_roots, ("model", "name_or_path"), "model")
