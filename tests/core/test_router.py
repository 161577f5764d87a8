"""select_model as a pure function: table-driven, milliseconds each."""

from __future__ import annotations

from pathlib import Path

import pytest

from rustaid.core.registry import ModelEntry, ModelState
from rustaid.core.router import SelectionCriteria, select_model
from rustaid.errors import PreconditionFailed
from tests.helpers import model_entry

entry = model_entry

SMALL, BIG = entry("small", 100), entry("big", 250)


@pytest.mark.parametrize(
    ("entries", "criteria", "prefer_small", "picked"),
    [
        # No preference: the id breaks the tie, deterministically.
        ([SMALL, BIG], SelectionCriteria(), "", "big"),
        # A constrained device prefers the smaller file...
        ([SMALL, BIG], SelectionCriteria(), "power profile ultra_saver", "small"),
        # ...even over a loaded bigger one (switching is worth it)...
        (
            [SMALL, entry("big", 250, state=ModelState.LOADED)],
            SelectionCriteria(),
            "thermal state serious",
            "small",
        ),
        # ...but not over an explicit priority.
        ([SMALL, entry("big", 250, priority=30)], SelectionCriteria(), "heat", "big"),
        # Required tags are hard requirements.
        (
            [SMALL, entry("big", 250, tags=("code",))],
            SelectionCriteria(required_tags=("code",)),
            "heat",
            "big",
        ),
        # Broken files are never picked.
        ([entry("small", 100, error="truncated"), BIG], SelectionCriteria(), "heat", "big"),
        # The power policy's remote preference.
        (
            [SMALL, entry("cloud", 0, remote=True)],
            SelectionCriteria(prefer_remote=True),
            "",
            "cloud",
        ),
    ],
)
def test_select_model(
    entries: list[ModelEntry], criteria: SelectionCriteria, prefer_small: str, picked: str
) -> None:
    selection = select_model(entries, criteria, prefer_small=prefer_small)
    assert selection.model_id == picked
    if prefer_small and picked == "small":
        reasons = next(c.reasons for c in selection.candidates if c.model_id == "small")
        assert any(f"smaller model preferred: {prefer_small}" in r for r in reasons)


def test_no_model_names_the_folder_and_the_pull_command() -> None:
    with pytest.raises(PreconditionFailed, match="rustaictl models pull") as e:
        select_model([], SelectionCriteria(), models_dir=Path("/data/models"))
    assert "/data/models" in e.value.message and e.value.reason == "NO_MODEL"


def test_every_excluded_model_says_why() -> None:
    with pytest.raises(PreconditionFailed, match="small: unusable: truncated"):
        select_model([entry("small", 1, error="truncated")], SelectionCriteria())
