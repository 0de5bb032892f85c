"""Where a spec may point: datasets under ``HPO_DATA_ROOTS``; models under ``HPO_MODEL_ROOTS``
or hub-style ids. Paths are resolved (symlinks followed) before the check, any ``..`` segment is
refused outright, and inside a folder every entry, file or folder, must resolve inside the roots
too and be a regular file or a folder (a FIFO would block whoever reads it). Messages never
print the roots: they are the operator's layout, not the client's business.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from hpo.core.errors import SpecError
from hpo.core.files import NotRegularFile, check_regular
from hpo.core.settings import Settings
from hpo.core.spec import BUILTIN_PREFIX, StudySpec

HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]{0,95}(/[A-Za-z0-9][\w.-]{0,95})?$")


def _inside(path: str, roots: list[Path]) -> bool:
    real = Path(os.path.realpath(path))
    resolved = [Path(os.path.realpath(root)) for root in roots]
    return any(real == root or root in real.parents for root in resolved)


def _check_local(
    path: str, roots: list[Path], loc: tuple[str, ...], what: str, variable: str, max_entries: int
) -> None:
    if ".." in Path(path).parts:
        raise SpecError(f"{what} path must not contain '..', but got {path!r}.", loc=loc)
    if not _inside(path, roots):
        raise SpecError(
            f"{what} path {path!r} is outside the roots the operator allowed ({variable}).",
            loc=loc,
        )
    try:
        if not os.path.isdir(path):
            if os.path.exists(path):
                check_regular(path)
            return
        _check_folder(path, roots, max_entries)
    except NotRegularFile as exc:
        raise SpecError(f"{what} {path!r}: {exc}", loc=loc) from None
    except _Outside:
        raise SpecError(
            f"{what} folder {path!r} holds a link that leads outside the roots the operator "
            f"allowed ({variable}).",
            loc=loc,
        ) from None
    except _TooMany:
        raise SpecError(
            f"{what} folder {path!r} holds more than {max_entries} entries "
            "(HPO_MAX_FOLDER_ENTRIES).",
            loc=loc,
        ) from None


class _Outside(Exception):
    pass


class _TooMany(Exception):
    pass


def _check_folder(path: str, roots: list[Path], max_entries: int) -> None:
    """Every entry under ``path``: inside the roots, a folder or a regular file.

    ``os.walk`` lists a symlink to a folder among the folders and does not descend into it by
    default, so folders are checked like files, and walked through links (a link inside the
    roots may lead to a folder holding links out); each real folder once, so links that loop
    end, and at most ``max_entries`` entries in all.
    """
    seen, walked = 0, set()
    for folder, dirs, files in os.walk(path, followlinks=True):
        real = os.path.realpath(folder)
        if real in walked:
            dirs.clear()
            continue
        walked.add(real)
        for name in (*dirs, *files):
            seen += 1
            if seen > max_entries:
                raise _TooMany
            if not _inside(os.path.join(folder, name), roots):
                raise _Outside
        for name in files:
            try:
                check_regular(os.path.join(folder, name))
            except OSError as exc:
                raise NotRegularFile(f"{name} cannot be read ({exc.strerror}).") from None


def check_spec_paths(spec: StudySpec, settings: Settings) -> None:
    """Raise SpecError when the spec's dataset or model points outside the allowed places, or
    at anything but regular files and folders."""
    for attribute, data in spec.train.dataset.paths().items():
        _check_local(
            data,
            settings.data_roots,
            ("train", "dataset", attribute),
            "dataset",
            "HPO_DATA_ROOTS",
            settings.max_folder_entries,
        )
    model = spec.train.model.name_or_path
    if model.startswith(BUILTIN_PREFIX):
        return
    if HUB_ID.match(model) and ".." not in model and not os.path.exists(model):
        return  # a hub id: from_pretrained resolves it through the local HF cache or the hub
    _check_local(
        model,
        settings.model_roots,
        ("train", "model", "name_or_path"),
        "model",
        "HPO_MODEL_ROOTS",
        settings.max_folder_entries,
    )
