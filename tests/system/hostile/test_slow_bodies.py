"""Issue 33 (3): connections trickling request bodies cannot take the turns owners need.

`hpo serve` with 3 turns and a queue of 10, and deadlines long enough that every trickling
connection the API admits is still trickling when the test ends: 40 connections without a token
and 10 of an owner with a valid token trickle POST bodies while another owner reads.
"""

from __future__ import annotations

import json
import select
import socket
import threading
from collections.abc import Iterator

import httpx
import pytest

from tests.conftest import TEMPLATE, new_pg_database
from tests.specs import minimal_spec
from tests.system.hostile.serving import Serve, serving
from tests.workers import wait_until

ANONYMOUS = 5  # requests without a valid token at once
WITHOUT_TOKEN = 40
WITH_TOKEN = 10
READS = 20


@pytest.fixture
def patient(
    pg_admin_url: str, pg_template: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Serve]:
    """Deadlines of 10 minutes: a connection the API admits holds on through the test."""
    with serving(
        new_pg_database(pg_admin_url, template=TEMPLATE),
        tmp_path_factory.mktemp("slow-bodies"),
        HPO_API_CONCURRENCY="3",
        HPO_API_QUEUE="10",
        HPO_API_QUEUE_TIMEOUT_S="10",
        HPO_API_BODY_TIMEOUT_S="600",
        HPO_API_ANONYMOUS=str(ANONYMOUS),
        HPO_API_ANONYMOUS_TIMEOUT_S="600",
    ) as server:
        yield server


class Tricklers:
    """Connections that send the headers of a POST that takes a turn (an enqueue; registrations
    take none), then one byte of its body at a time."""

    def __init__(self, serve: Serve, authorizations: list[bytes]) -> None:
        connect = socket.create_connection
        self.sockets = [connect(serve.address, timeout=60) for _ in authorizations]
        for sock, authorization in zip(self.sockets, authorizations, strict=True):
            sock.sendall(
                b"POST /studies/alice-study/trials HTTP/1.1\r\nHost: x\r\n"
                + b"Content-Type: application/json\r\n"
                + authorization
                + b"Content-Length: 100000\r\n\r\n{"
            )
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._trickle, daemon=True)
        self.thread.start()

    def _trickle(self) -> None:
        while not self.stop.wait(0.2):
            for sock in self.unanswered():
                try:
                    sock.send(b" ")
                except OSError:  # closed by the server since
                    continue

    def unanswered(self) -> list[socket.socket]:
        """The connections the server has neither answered nor closed."""
        readable, _, _ = select.select(self.sockets, [], [], 0)
        return [s for s in self.sockets if s not in readable]

    def answers(self) -> list[bytes]:
        """What the server sent on each answered connection, read until it closed."""
        answered = [s for s in self.sockets if s not in self.unanswered()]
        answers = []
        for sock in answered:
            answer = b""
            while chunk := sock.recv(4096):
                answer += chunk
            answers.append(answer)
        return answers

    def close(self) -> None:
        self.stop.set()
        self.thread.join(timeout=60)
        for sock in self.sockets:
            sock.close()


def _status_and_body(answer: bytes) -> tuple[int, dict[str, object], bytes]:
    head, _, body = answer.partition(b"\r\n\r\n")
    return int(head.split()[1]), json.loads(body), head.lower()


def test_trickling_bodies_hold_no_turn_an_owner_needs(patient: Serve) -> None:
    """Without a token, 5 connections run apart and 35 are refused at once (503, JSON,
    Retry-After, closed); with a token, a body holds no turn until it has arrived. Meanwhile
    alice's reads are all 200, and every admitted trickler is still trickling after them."""
    with patient.client("alice") as alice:
        alice.post("/studies", json=minimal_spec("alice-study")).raise_for_status()
        mallory = f"Authorization: Bearer {patient.token('mallory')}\r\n".encode()
        tricklers = Tricklers(patient, [b""] * WITHOUT_TOKEN + [mallory] * WITH_TOKEN)
        try:
            wait_until(
                lambda: len(tricklers.unanswered()) <= ANONYMOUS + WITH_TOKEN,
                timeout=120,
                what="the API to refuse the tricklers past its anonymous slots",
            )
            reads = [alice.get("/studies/alice-study").status_code for _ in range(READS)]
            assert reads == [200] * READS
            still_trickling = tricklers.unanswered()
            assert len(still_trickling) == ANONYMOUS + WITH_TOKEN
            assert set(tricklers.sockets[WITHOUT_TOKEN:]) <= set(still_trickling)
            answers = tricklers.answers()
        finally:
            tricklers.close()
        for status, body, head in map(_status_and_body, answers):
            assert (status, "detail" in body) == (503, True)
            assert b"retry-after: " in head and b"connection: close" in head
        # The closed tricklers gave their slots back: a request without a token is answered.
        wait_until(
            lambda: httpx.get(f"{patient.base_url}/studies", timeout=60).status_code == 401,
            timeout=120,
            what="a request without a token to be answered 401",
        )
