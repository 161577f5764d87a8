"""The hostile mix of `tests/bench/soak.py --hostile`: what an attacker (or a broken
client) does beside the legitimate clients, in a process of its own.

- huge grammars: Generate with a 1.09 MB grammar (100,000 alternatives; refused at
  once), with 64 KiB of one-character alternatives (within the byte limit, refused for
  its 16,380 choices) and with the costliest grammar admitted (2048 choices), in turn;
- a connection flood: an unprivileged user (nobody) opens 200 idle connections to the
  daemon's socket (it keeps that user's share open), closes and opens them again every
  few seconds (tests/auth/flood.py, through setpriv);
- disk full mid-index: the soak's parent fills the tmpfs holding the daemon's data
  while the legitimate clients index (see soak.py: `DiskFiller`).

(A fork bomb through `code_exec` needs that tool on, which the soak's daemon is not.)

Every answer is counted by status code; INTERNAL and UNKNOWN are bugs.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

# Connections the flood tries to hold (the daemon keeps its share, 32, open).
FLOOD_CONNECTIONS = 200
FLOOD_CHURN_S = 5.0
GRAMMAR_LIMIT = 64 << 10


def huge_grammar() -> str:
    return "root ::= " + " | ".join(f'"w{i}"' for i in range(100_000))


def dense_grammar() -> str:
    return "root ::= " + "|".join(["[a]"] * ((GRAMMAR_LIMIT - 9) // 4))


def costliest_grammar() -> str:
    from rustaid.builtin.llama_cpp import MAX_GRAMMAR_CHOICES

    return "root ::= " + "|".join(["[a]"] * (MAX_GRAMMAR_CHOICES + 1))


FLOOD = Path(__file__).resolve().parents[1] / "auth" / "flood.py"


def _flood(path: str, stop_at: float, held: list[int]) -> None:
    """Rounds of FLOOD_CONNECTIONS idle connections from user nobody; `held` gets how
    many the daemon kept open in each round."""
    while time.time() < stop_at:
        proc = subprocess.Popen(
            ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", "--",
             sys.executable, str(FLOOD), path, str(FLOOD_CONNECTIONS)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, cwd="/",
        )  # fmt: skip
        assert proc.stdin is not None and proc.stdout is not None
        line = proc.stdout.readline()
        held.append(int(line) if line.strip().isdigit() else -1)
        time.sleep(min(FLOOD_CHURN_S, max(0.0, stop_at - time.time())))
        proc.stdin.close()
        proc.wait(30)
        proc.stdout.close()


async def _grammars(address: str, model_id: str, stop_at: float, codes: Counter[str]) -> None:
    import grpc

    from rustaid.api.v1 import common_pb2, generate_pb2, generate_pb2_grpc

    requests = [
        ("huge_grammar", huge_grammar(), 1),
        ("dense_grammar", dense_grammar(), 1),
        ("costliest_grammar", costliest_grammar(), 2),
    ]
    async with grpc.aio.insecure_channel(address) as channel:
        stub = generate_pb2_grpc.GenerateServiceStub(channel)
        i = 0
        while time.time() < stop_at:
            name, grammar, max_tokens = requests[i % len(requests)]
            i += 1
            request = generate_pb2.GenerateRequest(
                model_id=model_id,
                prompt="x",
                params=common_pb2.GenerationParams(max_tokens=max_tokens, grammar=grammar),
            )
            try:
                await stub.Generate(request, timeout=30)
                codes[f"{name} OK"] += 1
            except grpc.aio.AioRpcError as e:
                codes[f"{name} {e.code().name}"] += 1
            await asyncio.sleep(0.1)


async def _run(plan: dict[str, Any]) -> dict[str, Any]:
    await asyncio.sleep(max(0.0, plan["start_at"] - time.time()))
    codes: Counter[str] = Counter()
    held: list[int] = []
    path = plan["address"].removeprefix("unix://")
    # The flood ends a little before the soak, so the last samples show whether the
    # daemon let go of every connection it was refused or held.
    flood_end = plan["stop_at"] - max(FLOOD_CHURN_S, 0.3 * (plan["stop_at"] - plan["start_at"]))
    flood = threading.Thread(target=_flood, args=(path, flood_end, held), daemon=True)
    flood.start()
    await _grammars(plan["address"], plan["model_id"], plan["stop_at"], codes)
    flood.join(FLOOD_CHURN_S + 10)
    return {"codes": dict(codes), "flood_held": held}


def hostile_main(plan: dict[str, Any], conn: Any) -> None:
    """Entry point of the hostile process (spawned): sends back what it saw."""
    try:
        conn.send(("ok", asyncio.run(_run(plan))))
    except BaseException as e:
        import traceback

        conn.send(("error", f"{type(e).__name__}: {e}\n{traceback.format_exc()}"))
    finally:
        conn.close()


class DiskFiller:
    """Fills the file system of `folder` (leaving `leave` bytes) between two moments,
    then frees it: the disk is full in the middle of the legitimate clients' indexing."""

    def __init__(self, folder: Path, fill_at: float, free_at: float, leave: int = 8 << 20) -> None:
        self.file = folder / "hostile-filler"
        self.fill_at, self.free_at, self.leave = fill_at, free_at, leave
        self.filled = self.freed = False

    def tick(self, now: float) -> None:
        if not self.filled and now >= self.fill_at:
            self.filled = True
            st = os.statvfs(self.file.parent)
            remaining = max(0, st.f_bavail * st.f_frsize - self.leave)
            block = b"\0" * (1 << 20)
            with self.file.open("wb") as f, contextlib.suppress(OSError):
                while remaining > 0:
                    n = min(len(block), remaining)
                    f.write(block[:n])
                    remaining -= n
        if self.filled and not self.freed and now >= self.free_at:
            self.freed = True
            self.file.unlink(missing_ok=True)
