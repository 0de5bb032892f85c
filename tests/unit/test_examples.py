"""Every example study is a valid spec (the system tier runs the ones on built-in models)."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from hpo.core.spec import StudySpec

EXAMPLES = sorted((Path(__file__).resolve().parents[2] / "examples").glob("*.yaml"))


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_example_is_a_valid_study(path: Path) -> None:
    spec = StudySpec.model_validate(yaml.safe_load(path.read_text()))
    assert spec.name and spec.description


def test_the_three_fine_tune_shapes_and_a_decoding_search_are_shown() -> None:
    specs = [StudySpec.model_validate(yaml.safe_load(p.read_text())) for p in EXAMPLES]
    datasets = {Path(s.train.dataset.path).name for s in specs}
    assert {"short_answers.jsonl", "chat.jsonl"} <= datasets
    assert any(s.train.mode == "decode" for s in specs)
