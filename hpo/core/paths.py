"""Where a spec may point: datasets under ``HPO_DATA_ROOTS``; models under ``HPO_MODEL_ROOTS``
or hub-style ids. Paths are resolved (symlinks followed) before the check, any ``..`` segment is
refused outright, and inside a dataset folder every file must resolve inside the roots too.
Messages never print the roots: they are the operator's layout, not the client's business.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from hpo.core.errors import SpecError
from hpo.core.settings import Settings
from hpo.core.spec import BUILTIN_PREFIX, StudySpec

HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]{0,95}(/[A-Za-z0-9][\w.-]{0,95})?$")
MAX_FOLDER_FILES = 100_000


def _inside(path: str, roots: list[Path]) -> bool:
    real = Path(os.path.realpath(path))
    resolved = [Path(os.path.realpath(root)) for root in roots]
    return any(real == root or root in real.parents for root in resolved)


def _check_local(
    path: str, roots: list[Path], loc: tuple[str, ...], what: str, variable: str
) -> None:
    if ".." in Path(path).parts:
        raise SpecError(f"{what} path must not contain '..', but got {path!r}.", loc=loc)
    if not _inside(path, roots):
        raise SpecError(
            f"{what} path {path!r} is outside the roots the operator allowed ({variable}).",
            loc=loc,
        )
    if os.path.isdir(path):
        for folder, _, files in os.walk(path):
            for name in files[:MAX_FOLDER_FILES]:
                if not _inside(os.path.join(folder, name), roots):
                    raise SpecError(
                        f"{what} folder {path!r} holds a link that leads outside the roots "
                        f"the operator allowed ({variable}).",
                        loc=loc,
                    )


def check_spec_paths(spec: StudySpec, settings: Settings) -> None:
    """Raise SpecError when the spec's dataset or model points outside the allowed places."""
    data = spec.train.dataset.path
    if not data.startswith(BUILTIN_PREFIX):
        _check_local(
            data, settings.data_roots, ("train", "dataset", "path"), "dataset", "HPO_DATA_ROOTS"
        )
    model = spec.train.model.name_or_path
    if model.startswith(BUILTIN_PREFIX):
        return
    if HUB_ID.match(model) and ".." not in model and not os.path.exists(model):
        return  # a hub id: from_pretrained resolves it through the local HF cache or the hub
    _check_local(
        model, settings.model_roots, ("train", "model", "name_or_path"), "model", "HPO_MODEL_ROOTS"
    )
