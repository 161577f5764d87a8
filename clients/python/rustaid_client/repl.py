"""`rustaictl chat` on a terminal: a conversation with line editing, history and slash
commands.

Line editing and the history (kept in `$XDG_STATE_HOME/rustaid/chat_history`, else
`~/.local/state/rustaid/chat_history`) come from the standard library's `readline`.
Ctrl-C while the model answers stops the answer (the stream is cancelled, so the model
is free at once) and keeps what it said; Ctrl-C at the prompt clears the line; Ctrl-D or
/exit leaves.
"""

from __future__ import annotations

import contextlib
import json
import os
import shlex
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO, cast

from rustaid_client.client import ChatInput, Client, GenerationOptions, RustaidError

PROMPT = ">>> "
CONTINUATION = "... "
Turn = tuple[str, str]  # (role, content)
# A conversation file (/save, /load): JSON with this format marker.
FORMAT = "rustaid-chat/1"

HELP = """\
Commands (anything else is sent to the model):
  /help                 this help
  /model [ID]           show or change the model ("" or auto: the router picks)
  /system [TEXT]        show or set the system prompt (/system - clears it)
  /temperature [T]      show or set the sampling temperature (/temperature - : default)
  /max-tokens [N]       show or set the answer's length limit (/max-tokens - : default)
  /stats [on|off]       print model, tokens and speed after each answer
  /save FILE            save the conversation and its settings as JSON
  /load FILE            continue a saved conversation
  /reset                forget the conversation (the settings stay)
  /history              show the conversation so far
  /exit                 leave (Ctrl-D too)
Input: end a line with \\ to continue it on the next one, or put a message between
lines of triple quotes (\"\"\"). Ctrl-C stops an answer; at the prompt it clears the line."""


class CommandError(Exception):
    """A slash command that cannot be done: the message says what to type instead."""


@dataclass
class Conversation:
    """What is sent with each turn: settings and the messages so far."""

    model: str = ""
    system: str = ""
    options: GenerationOptions = field(default_factory=GenerationOptions)
    messages: list[Turn] = field(default_factory=list)
    stats: bool = False

    def request(self) -> list[ChatInput]:
        head: list[ChatInput] = [("system", self.system)] if self.system else []
        return head + self.messages

    def to_json(self) -> dict[str, Any]:
        return {
            "format": FORMAT,
            "model": self.model,
            "system": self.system,
            "options": dict(self.options),
            "messages": [{"role": r, "content": c} for r, c in self.messages],
        }

    @classmethod
    def from_json(cls, data: Any, where: str) -> Conversation:
        if not isinstance(data, dict) or data.get("format") != FORMAT:
            raise CommandError(f"{where} is not a conversation saved with /save")
        try:
            messages = [(str(m["role"]), str(m["content"])) for m in data["messages"]]
            options = cast(GenerationOptions, dict(data.get("options", {})))
            return cls(str(data["model"]), str(data["system"]), options, messages)
        except (KeyError, TypeError) as e:
            raise CommandError(f"{where}: damaged conversation file ({e})") from e


def history_file() -> Path:
    state = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(state) / "rustaid" / "chat_history"


@contextlib.contextmanager
def line_editing() -> Iterator[None]:
    """readline's editing and a persistent history, when the platform has readline."""
    try:
        import readline
    except ImportError:  # not on every platform: plain input() still works
        yield
        return
    path = history_file()
    with contextlib.suppress(OSError):
        readline.read_history_file(path)
    readline.set_history_length(1000)
    try:
        yield
    finally:
        with contextlib.suppress(OSError):
            path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            readline.write_history_file(path)
            path.chmod(0o600)  # what you said to the model is yours alone


class Repl:
    def __init__(
        self,
        client: Client,
        conversation: Conversation,
        answer: Callable[[Client, Conversation], tuple[str, str]],
        out: TextIO = sys.stdout,
        err: TextIO = sys.stderr,
    ) -> None:
        self.client = client
        self.conv = conversation
        self._answer = answer  # (text, stats line) of one streamed turn
        self.out = out
        self.err = err

    def note(self, text: str) -> None:
        print(text, file=self.err, flush=True)

    def read_message(self) -> str | None:
        """One message: a line, lines joined by a trailing backslash, or a triple-quoted
        block. None at end of input."""
        line = input(PROMPT)
        if line.strip() == '"""':
            lines: list[str] = []
            while (more := input(CONTINUATION)).strip() != '"""':
                lines.append(more)
            return "\n".join(lines)
        parts = []
        while line.endswith("\\"):
            parts.append(line[:-1])
            line = input(CONTINUATION)
        parts.append(line)
        return "\n".join(parts)

    def run(self) -> int:
        self.note("Chatting with rustaid. /help lists the commands; Ctrl-D or /exit leaves.")
        with line_editing():
            while True:
                try:
                    message = self.read_message()
                except EOFError:
                    print(file=self.out)
                    return 0
                except KeyboardInterrupt:
                    print("^C", file=self.out)
                    continue
                if message is None or not message.strip():
                    continue
                if message.startswith("/"):
                    try:
                        if self.command(message) == "exit":
                            return 0
                    except CommandError as e:
                        self.note(str(e))
                    continue
                self.turn(message)

    def turn(self, message: str) -> None:
        self.conv.messages.append(("user", message))
        try:
            text, stats = self._answer(self.client, self.conv)
        except RustaidError as e:
            self.conv.messages.pop()
            self.note(f"rustaictl: {e}")
            return
        if not text:  # stopped before it said anything: as if not asked
            self.conv.messages.pop()
            return
        self.conv.messages.append(("assistant", text))
        if stats and self.conv.stats:
            self.note(stats)

    # -- slash commands -------------------------------------------------------------

    def command(self, line: str) -> str:
        try:
            words = shlex.split(line)
        except ValueError as e:
            raise CommandError(f"{line}: {e}") from e
        name, rest = words[0], words[1:]
        arg = " ".join(rest)
        handlers: dict[str, Callable[[str], str | None]] = {
            "/help": lambda _: self.note(HELP),
            "/model": self._model,
            "/system": self._system,
            "/temperature": self._temperature,
            "/max-tokens": self._max_tokens,
            "/stats": self._stats,
            "/save": self._save,
            "/load": self._load,
            "/reset": self._reset,
            "/history": self._history,
            "/exit": lambda _: "exit",
            "/quit": lambda _: "exit",
        }
        handler = handlers.get(name)
        if handler is None:
            raise CommandError(f"unknown command {name}: /help lists the commands")
        return handler(arg) or ""

    def _model(self, arg: str) -> None:
        if arg:
            self.conv.model = "" if arg == "auto" else arg
        self.note(f"model: {self.conv.model or 'auto (the router picks)'}")

    def _system(self, arg: str) -> None:
        if arg:
            self.conv.system = "" if arg == "-" else arg
        self.note(f"system prompt: {self.conv.system or '(none)'}")

    def _number(self, key: str, arg: str, kind: Callable[[str], Any], what: str) -> None:
        if arg == "-":
            self.conv.options.pop(key, None)  # type: ignore[misc]
        elif arg:
            try:
                value = kind(arg)
            except ValueError as e:
                raise CommandError(f"/{key.replace('_', '-')} takes {what}, not {arg!r}") from e
            self.conv.options[key] = value  # type: ignore[literal-required]
        shown = self.conv.options.get(key, "the model's default")
        self.note(f"{key.replace('_', ' ')}: {shown}")

    def _temperature(self, arg: str) -> None:
        self._number("temperature", arg, float, "a number such as 0.7 (0: greedy)")

    def _max_tokens(self, arg: str) -> None:
        self._number("max_tokens", arg, int, "a whole number of tokens")

    def _stats(self, arg: str) -> None:
        if arg not in ("", "on", "off"):
            raise CommandError("/stats takes on or off")
        self.conv.stats = arg != "off" if arg else not self.conv.stats
        self.note(f"stats: {'on' if self.conv.stats else 'off'}")

    def _save(self, arg: str) -> None:
        if not arg:
            raise CommandError("/save needs a file name, e.g. /save chat.json")
        path = Path(arg).expanduser()
        try:
            path.write_text(json.dumps(self.conv.to_json(), indent=2, ensure_ascii=False) + "\n")
        except OSError as e:
            raise CommandError(f"cannot save to {path}: {e.strerror}") from e
        self.note(f"saved {len(self.conv.messages)} messages to {path}")

    def _load(self, arg: str) -> None:
        if not arg:
            raise CommandError("/load needs a file name, e.g. /load chat.json")
        path = Path(arg).expanduser()
        try:
            data = json.loads(path.read_text())
        except OSError as e:
            raise CommandError(f"cannot read {path}: {e.strerror}") from e
        except ValueError as e:
            raise CommandError(f"{path} is not JSON: {e}") from e
        loaded = Conversation.from_json(data, str(path))
        loaded.stats = self.conv.stats
        self.conv = loaded
        self.note(f"loaded {len(loaded.messages)} messages from {path}")

    def _reset(self, _arg: str) -> None:
        self.conv.messages.clear()
        self.note("conversation cleared")

    def _history(self, _arg: str) -> None:
        system: list[Turn] = [("system", self.conv.system)] if self.conv.system else []
        for role, content in system + self.conv.messages:
            self.note(f"[{role}] {content}")
