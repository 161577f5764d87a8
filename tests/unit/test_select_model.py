"""select_model, case by case: every hard requirement that excludes a model, every
score it can earn, and how ties are broken. Pure, milliseconds each; the end-to-end
choice through a daemon is in tests/services/test_models.py."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import pytest

from rustaid.core.generation_types import Speed
from rustaid.core.models_toml import Constraints
from rustaid.core.registry import ModelEntry, ModelKind, ModelState
from rustaid.core.router import Candidate, SelectionCriteria, select_model
from rustaid.errors import PreconditionFailed
from rustaid.providers import ModelMetadata
from tests.helpers import model_entry

C = SelectionCriteria
LOCAL, CLOUD = model_entry("local", 500), model_entry("cloud", 0, remote=True)


def candidate(entries: list[ModelEntry], criteria: C, model_id: str, **kw: Any) -> Candidate:
    selection = select_model(entries, criteria, **kw)
    return next(c for c in selection.candidates if c.model_id == model_id)


@pytest.mark.parametrize(
    ("model", "criteria", "kwargs", "why"),
    [
        (model_entry("m", error="truncated"), C(), {}, "unusable: truncated"),
        (model_entry("m", tags=("chat",)), C(required_tags=("code", "chat")), {},
         "missing required tags: code"),
        (LOCAL, C(), {"fits": lambda e: "needs 2 GB, the budget is 1 GB" * (e.id == "local")},
         "needs 2 GB, the budget is 1 GB"),
        (LOCAL, C(max_latency_ms=500), {"speed": {"local": Speed(50, 900, 3)}},
         "measured time to first token 900 ms exceeds max_latency_ms 500"),
    ],
    ids=["broken", "tags", "does-not-fit", "too-slow"],
)  # fmt: skip
def test_hard_requirements_exclude_and_say_why(
    model: ModelEntry, criteria: C, kwargs: dict[str, Any], why: str
) -> None:
    other = model_entry("zz-other", tags=criteria.required_tags)
    selection = select_model([model, other], criteria, **kwargs)
    assert selection.model_id == "zz-other"  # else a tie, which the id would break
    excluded = next(c for c in selection.candidates if c.model_id == model.id)
    assert excluded.excluded and excluded.reasons == [why]


@pytest.mark.parametrize(
    ("model", "criteria", "kwargs", "score", "reason"),
    [
        (model_entry("m", priority=7), C(), {}, 7.0, "+7.0 priority"),
        (model_entry("m", state=ModelState.LOADED), C(), {}, 5.0, "+5.0 already loaded"),
        (LOCAL, C(prefer_local=True), {}, 50.0, "+50.0 local"),
        (CLOUD, C(prefer_local=True), {}, 0.0, ""),
        (CLOUD, C(prefer_remote=True), {}, 50.0, "+50.0 remote (power policy)"),
        (LOCAL, C(prefer_remote=True), {}, 0.0, ""),
        (CLOUD, C(battery_sensitive=True), {}, 10.0,
         "+10.0 runs remotely: no local battery draw"),
        (replace(LOCAL, constraints=Constraints(max_battery_draw_mw=2000)),
         C(battery_sensitive=True), {}, 5.0, "+5.0 battery efficiency (declared draw)"),
        (LOCAL, C(battery_sensitive=True), {}, 5.0, "+5.0 battery efficiency (size)"),
        (LOCAL, C(prefer_speed=True), {"speed": {"local": Speed(99, 40, 2)}}, 20.0,
         "+20.0 measured 99 tokens/s"),
        (model_entry("m", 180), C(prefer_speed=True), {}, 1.0,
         "+1.0 speed not measured yet: estimated from size"),
        (CLOUD, C(prefer_speed=True), {}, 0.0, ""),
        (replace(LOCAL, quality=7.0), C(prefer_quality=True), {}, 14.0, "+14.0 quality 7/10"),
        (replace(LOCAL, metadata=ModelMetadata(parameter_count=1_000_000_000)),
         C(prefer_quality=True), {}, 9.29, "+9.3 1.00B parameters"),
        (LOCAL, C(prefer_quality=True), {}, 0.0, ""),
        (model_entry("m", tags=("code", "chat", "x")), C(required_tags=("code", "chat")), {},
         20.0, "+20.0 tags code, chat"),
        (LOCAL, C(max_latency_ms=500), {"speed": {"local": Speed(50, 900, 0)}}, 0.0, ""),
        (LOCAL, C(), {"prefer_small": "heat"}, 20.0, "+20.0 smaller model preferred: heat"),
    ],
)  # fmt: skip
def test_scores(
    model: ModelEntry, criteria: C, kwargs: dict[str, Any], score: float, reason: str
) -> None:
    got = candidate([model], criteria, model.id, **kwargs)
    assert not got.excluded
    assert got.score == pytest.approx(score, abs=0.01)
    assert got.reasons == ([reason] if reason else [])


def test_a_smaller_model_gets_points_in_proportion() -> None:
    entries = [model_entry("small", 100), model_entry("big", 200), CLOUD]
    selection = select_model(entries, C(), prefer_small="memory pressure warning")
    scores = {c.model_id: c.score for c in selection.candidates}
    assert scores == {"small": 20.0, "big": 10.0, "cloud": 0.0}
    assert selection.model_id == "small"


def test_measured_energy_per_token_decides_once_every_local_model_has_one() -> None:
    # The bigger file spends less per token here (it is faster on this device).
    entries = [model_entry("small", 100), model_entry("big", 200), CLOUD]
    measured = {"small": Speed(20, 100, 3, joules_per_token=0.4), "big": Speed(60, 90, 3, 0.1)}
    selection = select_model(entries, C(), prefer_small="heat", speed=measured)
    scores = {c.model_id: c.score for c in selection.candidates}
    assert scores == {"small": 5.0, "big": 20.0, "cloud": 0.0}
    assert selection.model_id == "big"
    big = next(c for c in selection.candidates if c.model_id == "big")
    assert big.reasons == ["+20.0 0.1 J per token measured preferred: heat"]
    # One model not measured yet: sizes compare, not a measurement with a guess.
    del measured["small"]
    selection = select_model(entries, C(), prefer_small="heat", speed=measured)
    assert selection.model_id == "small"


def test_energy_is_averaged_per_generated_token() -> None:
    speed = Speed()
    speed.add_energy(0.0, 10)  # no estimate: nothing learnt
    speed.add_energy(2.0, 0)
    assert speed.joules_per_token == 0.0
    speed.add_energy(2.0, 10)
    assert speed.joules_per_token == pytest.approx(0.2)
    speed.add_energy(12.0, 10)  # a moving average: recent requests weigh 0.3
    assert speed.joules_per_token == pytest.approx(0.2 + 0.3 * (1.2 - 0.2))


@pytest.mark.parametrize(
    ("entries", "picked"),
    [
        # Equal scores: the most recently used, then the id.
        ([model_entry("a"), model_entry("b", last_used=5.0)], "b"),
        ([model_entry("b"), model_entry("a")], "a"),
        # Scores first.
        ([model_entry("a", last_used=9.0), model_entry("b", priority=1)], "b"),
    ],
)
def test_ties(entries: list[ModelEntry], picked: str) -> None:
    assert select_model(entries, C()).model_id == picked


def test_usable_candidates_come_first_best_first_then_the_excluded() -> None:
    entries = [
        model_entry("broken", error="bad"),
        model_entry("low", priority=1),
        model_entry("high", priority=9),
    ]
    order = [(c.model_id, c.excluded) for c in select_model(entries, C()).candidates]
    assert order == [("high", False), ("low", False), ("broken", True)]


def test_only_models_of_the_asked_kind_are_candidates() -> None:
    embedder = model_entry("e", kind=ModelKind.EMBEDDING)
    selection = select_model([embedder, LOCAL], C())
    assert [c.model_id for c in selection.candidates] == ["local"]
    assert select_model([embedder, LOCAL], C(), ModelKind.EMBEDDING).model_id == "e"


def test_no_fitting_model_names_each_and_why() -> None:
    entries = [model_entry("a", error="truncated"), model_entry("b", tags=("x",))]
    with pytest.raises(PreconditionFailed) as info:
        select_model(entries, C(required_tags=("code",)))
    assert info.value.reason == "NO_MODEL"
    assert info.value.message == (
        "no model fits the request (a: unusable: truncated; b: missing required tags: code)"
    )
