"""`rustaictl chat` as a person uses it: under a real pseudo-terminal (pexpect), against
a real daemon serving the real SmolLM2 chat model and a slow synthetic one."""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Iterator
from pathlib import Path

import pexpect
import pytest

from rustaid.testing import real_model as real
from rustaid.testing.daemon import DaemonProcess, run_daemon
from tests.conftest import add_model

RUSTAICTL = str(Path(sys.executable).with_name("rustaictl"))
PROMPT = ">>> "
UP = "\x1b[A"


@pytest.fixture(scope="module")
def daemon(
    tmp_path_factory: pytest.TempPathFactory, real_model: Path, model_files: dict[str, Path]
) -> Iterator[DaemonProcess]:
    data_dir = tmp_path_factory.mktemp("repl")
    real.place(real_model, data_dir / "models")
    add_model(data_dir, model_files["slow"])
    with run_daemon(data_dir) as d:
        yield d


def chat(daemon: DaemonProcess, home: Path, *args: str) -> pexpect.spawn:
    env = {**os.environ, "HOME": str(home), "XDG_STATE_HOME": str(home / "state")}
    child = pexpect.spawn(
        RUSTAICTL,
        ["--address", daemon.address, "chat", *args],
        env=env,
        cwd=str(home),
        encoding="utf-8",
        dimensions=(40, 120),
        timeout=60,
    )
    child.expect_exact("/help lists the commands")
    child.expect_exact(PROMPT)
    return child


def command(child: pexpect.spawn, line: str, answer: str) -> None:
    child.sendline(line)
    child.expect_exact(answer)
    child.expect_exact(PROMPT)


def test_a_conversation_with_commands_history_and_files(
    daemon: DaemonProcess, tmp_path: Path
) -> None:
    child = chat(daemon, tmp_path, "--model", real.MODEL_ID, "--temperature", "0", "-n", "40")
    child.sendline("Name the capital city of France in one word.")
    child.expect("Paris")
    child.expect_exact(PROMPT)
    # Slash commands are not sent to the model.
    command(child, "/help", "/temperature [T]")
    command(child, "/model", f"model: {real.MODEL_ID}")
    command(child, "/nope", "unknown command /nope: /help lists the commands")
    command(child, "/temperature warm", "/temperature takes a number")
    command(child, "/system Answer in French.", "system prompt: Answer in French.")
    # Stats on demand.
    command(child, "/stats on", "stats: on")
    child.sendline("Say hello.")
    child.expect(r"tokens/s")
    child.expect_exact(PROMPT)
    # Line editing: Backspace fixes a typo; the Up arrow recalls the last line.
    child.send("/temperature 0.5x\x7f\r")
    child.expect_exact("temperature: 0.5")
    child.expect_exact(PROMPT)
    child.send(UP + "\r")
    child.expect_exact("temperature: 0.5")
    child.expect_exact(PROMPT)
    assert "^[[A" not in (child.before or "")
    # Multi-line input: a trailing backslash continues the message.
    child.sendline("/reset")
    child.expect_exact("conversation cleared")
    child.sendline("Translate into French:\\")
    child.expect_exact("... ")
    child.sendline("good morning")
    child.expect_exact(PROMPT)
    command(child, "/history", "[user] Translate into French:\r\ngood morning")
    # Save, forget, load: the conversation and its settings come back.
    command(child, "/save chat.json", "saved 2 messages to chat.json")
    command(child, "/reset", "conversation cleared")
    command(child, "/load chat.json", "loaded 2 messages from chat.json")
    command(child, "/history", "[system] Answer in French.")
    command(child, "/load nothing.json", "cannot read nothing.json")
    child.sendline("/exit")
    child.expect(pexpect.EOF)
    child.close()
    assert child.exitstatus == 0
    saved = json.loads((tmp_path / "chat.json").read_text())
    assert saved["format"] == "rustaid-chat/1" and saved["options"]["temperature"] == 0.5
    first = {"role": "user", "content": "Translate into French:\ngood morning"}
    assert saved["messages"][0] == first
    history = tmp_path / "state" / "rustaid" / "chat_history"
    assert "/temperature 0.5" in history.read_text()
    assert history.stat().st_mode & 0o777 == 0o600


def test_ctrl_c_stops_the_answer_not_the_conversation(
    daemon: DaemonProcess, tmp_path: Path
) -> None:
    child = chat(daemon, tmp_path, "--model", "slow", "--max-tokens", "4000")
    for _ in range(3):
        child.sendline("Once upon a time")
        child.expect_exact("Once upon a time\r\n")  # the terminal's echo
        child.expect(r"\S")  # the answer is streaming
        child.sendintr()
        # The synthetic model may end its answer (an end token) before the interrupt
        # lands on a machine this busy: then it is asked again, as a person would.
        if child.expect_exact(["[stopped]", PROMPT], timeout=120) == 0:
            break
    else:
        raise AssertionError("Ctrl-C never stopped an answer")
    child.expect_exact(PROMPT)
    # Ctrl-C at the prompt clears the line and keeps the conversation. Its echo shows
    # the line editor has the text; a Ctrl-C sent in the microseconds between the prompt
    # being drawn and the editor waiting for keys would be lost with the typed text
    # (the terminal flushes input on an interrupt), which no person can type that fast.
    child.send("half a line")
    child.expect_exact("half a line")
    child.sendintr()
    child.expect_exact(PROMPT)
    # The model is free at once: the next answer is not stuck behind the stopped one.
    command(child, "/max-tokens 4", "max tokens: 4")
    command(child, "/stats on", "stats: on")
    child.sendline("Go on")
    child.expect(r"4 tokens \(prompt \d+\)", timeout=30)
    child.expect_exact(PROMPT)
    command(child, "/history", "[user] Go on")
    child.sendeof()
    child.expect(pexpect.EOF)
    child.close()
    assert child.exitstatus == 0
