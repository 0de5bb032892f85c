"""Where a spec may point, checked without a server: roots, '..', links, folders, globs."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from pydantic import ValidationError

from hpo.core.errors import SpecError
from hpo.core.paths import check_spec_paths
from hpo.core.settings import Settings
from hpo.core.spec import StudySpec
from hpo.local import local_settings
from tests.specs import minimal_spec


@pytest.fixture
def roots(tmp_path: Path) -> tuple[Path, Path, Settings]:
    data, outside = tmp_path / "data", tmp_path / "outside"
    data.mkdir()
    outside.mkdir()
    (outside / "secret.csv").write_text("text\nsecret\n")
    return data, outside, Settings(data_roots=[data], model_roots=[tmp_path / "models"])


def _check(
    settings: Settings, *, data: str = "builtin:demo-text", model: str = "org/model"
) -> None:
    spec = StudySpec.model_validate(
        minimal_spec("p", dataset={"path": data}, model={"name_or_path": model})
    )
    check_spec_paths(spec, settings)


def test_inside_the_roots_is_fine(roots: tuple[Path, Path, Settings]) -> None:
    data, _, settings = roots
    (data / "ok.csv").write_text("text\nhi\n")
    _check(settings, data=str(data / "ok.csv"))  # a hub id needs no root


@pytest.mark.parametrize(
    ("make", "why"),
    [
        (lambda d, o: str(d / ".." / "outside" / "secret.csv"), "must not contain '..'"),
        (lambda d, o: str(o / "secret.csv"), "outside the roots the operator allowed"),
        (lambda d, o: _link(d / "escape.csv", o / "secret.csv"), "outside the roots"),
        (lambda d, o: _folder_with_link(d / "saved", o / "secret.csv"), "a link that leads"),
    ],
    ids=["dotdot", "outside", "link", "folder-link"],
)
def test_escapes_are_refused_without_naming_the_roots(
    roots: tuple[Path, Path, Settings], make: object, why: str
) -> None:
    data, outside, settings = roots
    with pytest.raises(SpecError) as error:
        _check(settings, data=make(data, outside))  # type: ignore[operator]
    assert why in error.value.message and str(data) + "'" not in error.value.message
    assert error.value.loc == ("train", "dataset", "path")


def test_globs_and_unknown_builtins_fail_in_the_spec() -> None:
    for path in ("data/*.csv", "data/[ab].csv", "builtin:../x", "builtin:nope"):
        with pytest.raises(ValidationError):
            StudySpec.model_validate(minimal_spec("g", dataset={"path": path}))


def _link(link: Path, target: Path) -> str:
    link.symlink_to(target)
    return str(link)


def _folder_with_link(folder: Path, target: Path) -> str:
    folder.mkdir()
    (folder / "part.arrow").symlink_to(target)
    return str(folder)


def test_a_directory_link_out_of_the_roots_is_refused(roots: tuple[Path, Path, Settings]) -> None:
    """os.walk lists a link to a folder among the folders and does not descend into it."""
    data, outside, settings = roots
    (data / "ds").mkdir()
    (data / "ds" / "train").symlink_to(outside, target_is_directory=True)
    with pytest.raises(SpecError, match="leads outside the roots"):
        _check(settings, data=str(data / "ds"))


def test_links_inside_the_roots_are_walked_through(roots: tuple[Path, Path, Settings]) -> None:
    """A folder link inside the roots is followed: the folder it leads to may hold links out."""
    data, outside, settings = roots
    (data / "other").mkdir()
    (data / "other" / "x.csv").symlink_to(outside / "secret.csv")
    (data / "ds").mkdir()
    (data / "ds" / "train").symlink_to(data / "other", target_is_directory=True)
    with pytest.raises(SpecError, match="leads outside the roots"):
        _check(settings, data=str(data / "ds"))


def test_looping_links_end(roots: tuple[Path, Path, Settings]) -> None:
    data, _, settings = roots
    (data / "ds").mkdir()
    (data / "ds" / "x.csv").write_text("text\nhi\n")
    (data / "ds" / "loop").symlink_to(data / "ds", target_is_directory=True)
    _check(settings, data=str(data / "ds"))


def test_folders_hold_a_bounded_number_of_entries(roots: tuple[Path, Path, Settings]) -> None:
    data, _, settings = roots
    for n in range(3):
        (data / "ds" / str(n)).mkdir(parents=True)
        (data / "ds" / str(n) / "x.csv").write_text("text\nhi\n")
    _check(settings.model_copy(update={"max_folder_entries": 6}), data=str(data / "ds"))
    with pytest.raises(SpecError, match="more than 5 entries"):
        _check(settings.model_copy(update={"max_folder_entries": 5}), data=str(data / "ds"))


def test_fifos_and_broken_links_are_refused(roots: tuple[Path, Path, Settings]) -> None:
    data, _, settings = roots
    (data / "ds").mkdir()
    os.mkfifo(data / "ds" / "data.arrow")
    with pytest.raises(SpecError, match="data.arrow is a FIFO"):
        _check(settings, data=str(data / "ds"))
    os.mkfifo(data / "rows.jsonl")
    with pytest.raises(SpecError, match="rows.jsonl is a FIFO"):
        _check(settings, data=str(data / "rows.jsonl"))
    (data / "ds" / "data.arrow").unlink()
    (data / "ds" / "gone.arrow").symlink_to(data / "nowhere.arrow")
    with pytest.raises(SpecError, match="gone.arrow cannot be read"):
        _check(settings, data=str(data / "ds"))


def test_validation_and_test_files_are_checked_too(roots: tuple[Path, Path, Settings]) -> None:
    data, outside, settings = roots
    (data / "ok.csv").write_text("text\nhi\n")
    spec = StudySpec.model_validate(
        minimal_spec(
            "p", dataset={"path": str(data / "ok.csv"), "test_path": str(outside / "secret.csv")}
        )
    )
    with pytest.raises(SpecError, match="outside the roots") as refused:
        check_spec_paths(spec, settings)
    assert refused.value.loc == ("train", "dataset", "test_path")


def test_hpo_run_allows_any_path_unless_the_operator_set_roots(
    roots: tuple[Path, Path, Settings], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """One machine's user has no operator: ``hpo run`` takes a spec's absolute paths as they
    are; HPO_DATA_ROOTS / HPO_MODEL_ROOTS, when set, still bound it (and always bound
    ``hpo serve`` / ``hpo worker``, whose default is the working folder)."""
    data, outside, _ = roots
    secret = str(outside / "secret.csv")
    for name in ("HPO_DATA_ROOTS", "HPO_MODEL_ROOTS"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.chdir(data)
    with pytest.raises(SpecError, match="HPO_DATA_ROOTS"):
        _check(Settings(), data=secret)
    _check(local_settings(data, None), data=secret, model=str(outside))
    monkeypatch.setenv("HPO_DATA_ROOTS", f'["{data}"]')
    with pytest.raises(SpecError, match="HPO_DATA_ROOTS"):
        _check(local_settings(data, None), data=secret)
