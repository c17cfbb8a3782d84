"""Answers lost after the work is done: a simulated system applies a write, then its caller
never learns the outcome, because the connection drops, a 5xx comes back, or the answer comes
too late. This is the fault that makes a create unsafe to send again; both simulators have it
(`lose_answers_after_apply` in their `/_sim/faults` settings and their fault objects)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

from starlette.types import ASGIApp, Message, Receive, Scope, Send

LostAnswer = Literal["disconnect", "server_error", "timeout"]


@dataclass
class AnswerLoss:
    """The fault switches, as a part of each simulator's fault object."""

    lose_answers_after_apply: int = 0  # the next N writes that succeed lose their answer
    lost_answer: LostAnswer = "disconnect"
    lost_answer_hold_ms: int = 30_000  # how long "timeout" keeps its caller waiting
    answers_lost: int = 0

    def take_lost_answer(self) -> LostAnswer | None:
        if self.lose_answers_after_apply <= 0:
            return None
        self.lose_answers_after_apply -= 1
        self.answers_lost += 1
        return self.lost_answer


class LoseAnswers:
    """ASGI middleware: a write goes through, then its answer is lost while the faults say so.
    Only successful writes count: an answer that says nothing was applied is not lost."""

    def __init__(
        self,
        app: ASGIApp,
        *,
        faults: Callable[[Scope], AnswerLoss],
        is_write: Callable[[Scope], bool],
        server_error: tuple[int, bytes],
    ) -> None:
        self.app = app
        self._faults = faults
        self._is_write = is_write
        self._server_error = server_error

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not self._is_write(scope):
            await self.app(scope, receive, send)
            return
        answer: list[Message] = []

        async def keep(message: Message) -> None:
            answer.append(message)

        await self.app(scope, receive, keep)
        start = answer[0] if answer else None
        applied = start is not None and 200 <= start.get("status", 0) < 300
        lost = self._faults(scope).take_lost_answer() if applied else None
        if lost == "disconnect" and start is not None:
            # Headers that promise a body which never comes: the server closes the connection.
            await send(start)
            return
        if lost == "server_error":
            status, body = self._server_error
            headers = [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
            ]
            await send({"type": "http.response.start", "status": status, "headers": headers})
            await send({"type": "http.response.body", "body": body})
            return
        if lost == "timeout":
            await asyncio.sleep(self._faults(scope).lost_answer_hold_ms / 1000)
        for message in answer:
            await send(message)
