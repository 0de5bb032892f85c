"""Admission's pieces without a server: which token a request shows, the check's result
reused, and turns that refuse at once when full (the system tests run them under uvicorn)."""

from __future__ import annotations

import asyncio

from service.admission import TOKEN_CHECK, checked_owner, presented_token
from service.limits import Turns


def scope(*headers: tuple[bytes, bytes]) -> dict[str, object]:
    return {"type": "http", "headers": list(headers)}


def test_the_bearer_header_first_then_the_login_cookie() -> None:
    cookie = (b"cookie", b"other=1; hpo_token=from-cookie")
    assert presented_token(scope((b"authorization", b"Bearer t1"), cookie), "hpo_token") == "t1"
    assert presented_token(scope((b"authorization", b"Basic xyz"), cookie), "hpo_token") == (
        "from-cookie"
    )
    assert presented_token(scope((b"authorization", b"Bearer ")), "hpo_token") is None
    assert presented_token(scope(), "hpo_token") is None


def test_the_admission_check_is_reused_for_its_token_only() -> None:
    checked = scope() | {"state": {TOKEN_CHECK: ("t1", None)}}
    assert checked_owner(checked, "t1", lambda: "queried") is None  # a failed check stands
    assert checked_owner(checked, "t2", lambda: "queried") == "queried"
    assert checked_owner(scope(), "t1", lambda: "queried") == "queried"


def test_turns_without_a_queue_refuse_at_once_when_full() -> None:
    async def takes() -> list[bool]:
        turns = Turns(2)
        taken = [await turns.take() for _ in range(3)]
        turns.give_back()
        return [*taken, await turns.take()]

    assert asyncio.run(takes()) == [True, True, False, True]
