"""Chat sessions: the daemon keeps a conversation's history so a client sends only the
new message; the engine's prompt cache keeps its evaluated state between turns."""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, field

from rustaid.errors import InvalidArgument
from rustaid.providers import ChatMessage

MAX_SESSION_ID = 128


@dataclass
class Session:
    messages: list[ChatMessage] = field(default_factory=list)
    last_used: float = field(default_factory=time.monotonic)


class SessionStore:
    """Most recently used sessions, bounded in number and idle time."""

    def __init__(self, max_sessions: int = 256, ttl_s: float = 3600.0) -> None:
        self.max_sessions = max_sessions
        self.ttl_s = ttl_s
        self._sessions: OrderedDict[str, Session] = OrderedDict()

    def _expire(self) -> None:
        now = time.monotonic()
        for sid in [s for s, v in self._sessions.items() if now - v.last_used > self.ttl_s]:
            del self._sessions[sid]
        while len(self._sessions) > self.max_sessions:
            self._sessions.popitem(last=False)

    def history(self, session_id: str) -> tuple[ChatMessage, ...]:
        if len(session_id) > MAX_SESSION_ID or not session_id.isprintable():
            raise InvalidArgument(
                f"session_id must be 1..{MAX_SESSION_ID} printable characters",
                field="session_id",
            )
        self._expire()
        session = self._sessions.get(session_id)
        return tuple(session.messages) if session else ()

    def append(self, session_id: str, messages: Sequence[ChatMessage]) -> None:
        session = self._sessions.setdefault(session_id, Session())
        session.messages.extend(messages)
        session.last_used = time.monotonic()
        self._sessions.move_to_end(session_id)
        self._expire()

    def __len__(self) -> int:
        return len(self._sessions)
