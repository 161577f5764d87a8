"""D-Bus against gRPC, same daemon, same request, in one run:

    .venv/bin/python tests/bench/dbus.py [--tokens 64] [--runs 7] [--threads 2] [--json out.json]

1. Generate overhead: one `rustaid serve` child on a private session bus
   (dbus-daemon) serves a synthetic model with SmolLM2-135M shapes; rounds alternate
   `org.rustai.Daemon1.Generate` (dbus-next client) and `GenerateService.Generate`
   (grpc.aio client over the Unix socket), with the same prompt, `max_tokens`,
   temperature 0 and seed, so both generate the same tokens. Reported: the median wall
   time of each and their ratio (target: D-Bus <= 1.2x gRPC for 64 tokens).
2. Streaming: `StartGeneration` (Token signals, unicast to the caller) against
   `GenerateStream` (gRPC stream), tokens per second as the client receives them,
   (a) with the 135M model (the model sets the pace) and (b) with a tiny model that
   generates faster than any transport, so the delivery path itself is measured.

Both clients run in this process's event loop; the daemon logs at warning level.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a script: make `tests` and `rustaid` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from tests.bench import common

PROMPTS = ("hello", "what", "how", "why", "when", "where", "who", "which", "yes", "no")
PROMPT_TAIL = " user said to the assistant: can you answer this question about the rust daemon"
TARGET_RATIO = 1.2


def prompt_for(i: int) -> str:
    return PROMPTS[i % len(PROMPTS)] + PROMPT_TAIL


@contextlib.contextmanager
def served(models: list[Path], threads: int) -> Iterator[tuple[Any, Any]]:
    from rustaid.testing.daemon import run_daemon
    from rustaid.testing.dbus import private_bus

    with tempfile.TemporaryDirectory(prefix="rustaid-bench-") as tmp, private_bus() as bus:
        data_dir = Path(tmp)
        (data_dir / "models").mkdir()
        for model in models:
            (data_dir / "models" / model.name).symlink_to(model)
        env = common.child_env(
            RUSTAID_THREADS=str(threads), RUSTAID_LOG_LEVEL="warning", **bus.env()
        )
        with run_daemon(data_dir, env=env) as d:
            yield d, bus


class Clients:
    def __init__(self, address: str, bus_address: str) -> None:
        self.address = address
        self.bus_address = bus_address

    async def __aenter__(self) -> Clients:
        import grpc
        from dbus_next.aio.message_bus import MessageBus

        from rustaid.api.v1 import generate_pb2_grpc

        self.channel = grpc.aio.insecure_channel(self.address)
        await self.channel.channel_ready()
        self.stub = generate_pb2_grpc.GenerateServiceStub(self.channel)
        self.bus = await MessageBus(bus_address=self.bus_address).connect()
        self.signals: asyncio.Queue[Any] = asyncio.Queue()

        def on_message(msg: Any) -> bool:
            if msg.member in ("Token", "Finished", "Failed"):
                self.signals.put_nowait((time.perf_counter(), msg))
            return False

        self.bus.add_message_handler(on_message)
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.bus.disconnect()
        await self.channel.close()

    async def dbus_call(self, member: str, prompt: str, model: str, tokens: int) -> Any:
        from dbus_next.constants import MessageType
        from dbus_next.message import Message
        from dbus_next.signature import Variant

        options = {
            "model": Variant("s", model),
            "max_tokens": Variant("u", tokens),
            "temperature": Variant("d", 0.0),
            "seed": Variant("i", 42),
        }
        reply = await self.bus.call(
            Message(
                destination="org.rustai.Daemon1",
                path="/org/rustai/Daemon1",
                interface="org.rustai.Daemon1",
                member=member,
                signature="sa{sv}",
                body=[prompt, options],
            )
        )
        if reply is None or reply.message_type is MessageType.ERROR:
            raise RuntimeError(f"D-Bus {member} failed: {reply.body if reply else None}")
        return reply.body[0]

    def grpc_request(self, kind: str, prompt: str, model: str, tokens: int) -> Any:
        from rustaid.api.v1 import common_pb2, generate_pb2

        params = common_pb2.GenerationParams(max_tokens=tokens, temperature=0.0, seed=42)
        cls = (
            generate_pb2.GenerateRequest if kind == "unary" else generate_pb2.GenerateStreamRequest
        )
        return cls(model_id=model, prompt=prompt, params=params)

    # -- 1. unary ----------------------------------------------------------------------

    async def dbus_generate(self, prompt: str, model: str, tokens: int) -> tuple[float, str]:
        t0 = time.perf_counter()
        text = await self.dbus_call("Generate", prompt, model, tokens)
        return time.perf_counter() - t0, str(text)

    async def grpc_generate(self, prompt: str, model: str, tokens: int) -> tuple[float, str]:
        t0 = time.perf_counter()
        reply = await self.stub.Generate(self.grpc_request("unary", prompt, model, tokens))
        return time.perf_counter() - t0, reply.text

    # -- 2. streams ----------------------------------------------------------------------

    async def dbus_stream(self, prompt: str, model: str, tokens: int) -> tuple[int, float, int]:
        """(text pieces received, seconds from first to last, completion tokens)."""
        while not self.signals.empty():
            self.signals.get_nowait()
        gen_id = await self.dbus_call("StartGeneration", prompt, model, tokens)
        stamps: list[float] = []
        while True:
            t, msg = await self.signals.get()
            if msg.body[0] != gen_id:
                continue
            if msg.member == "Token":
                stamps.append(t)
            elif msg.member == "Finished":
                return len(stamps), stamps[-1] - stamps[0], msg.body[1]["completion_tokens"].value
            else:
                raise RuntimeError(f"generation failed: {msg.body}")

    async def grpc_stream(self, prompt: str, model: str, tokens: int) -> tuple[int, float, int]:
        stamps: list[float] = []
        completion = 0
        async for r in self.stub.GenerateStream(self.grpc_request("stream", prompt, model, tokens)):
            if r.HasField("chunk"):
                stamps.append(time.perf_counter())
            elif r.HasField("done"):
                completion = r.done.usage.completion_tokens
        return len(stamps), stamps[-1] - stamps[0], completion


async def measure(
    args: argparse.Namespace, d: Any, bus: Any, big: str, tiny: str
) -> dict[str, Any]:
    async with Clients(d.address, bus.address) as c:
        for model in (big, tiny):  # load both, warm up both paths
            await c.grpc_generate(prompt_for(0), model, 4)
            await c.dbus_generate(prompt_for(0), model, 4)
        unary: dict[str, list[float]] = {"dbus": [], "grpc": []}
        same_text = True
        for i in range(args.runs):
            order = ("dbus", "grpc") if i % 2 == 0 else ("grpc", "dbus")
            texts = {}
            for arm in order:
                fn = c.dbus_generate if arm == "dbus" else c.grpc_generate
                seconds, texts[arm] = await fn(prompt_for(i), big, args.tokens)
                unary[arm].append(seconds)
            same_text &= texts["dbus"] == texts["grpc"]
        streams: dict[str, dict[str, list[float]]] = {}
        for label, model, tokens in (
            ("135M", big, args.tokens),
            ("tiny", tiny, args.stream_tokens),
        ):
            rates: dict[str, list[float]] = {"dbus": [], "grpc": []}
            for i in range(args.runs):
                order = ("dbus", "grpc") if i % 2 == 0 else ("grpc", "dbus")
                for arm in order:
                    fn = c.dbus_stream if arm == "dbus" else c.grpc_stream
                    pieces, seconds, _ = await fn(prompt_for(i), model, tokens)
                    rates[arm].append((pieces - 1) / seconds if seconds > 0 else float("nan"))
            streams[label] = rates
    return {"unary": unary, "same_text": same_text, "streams": streams}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--tokens", type=int, default=64, help="max_tokens of the compared requests")
    p.add_argument(
        "--stream-tokens",
        type=int,
        default=100,
        help="max_tokens of the delivery-rate stream (tiny model)",
    )
    p.add_argument("--runs", type=int, default=7)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--json", help="write the results here")
    args = common.parse_args(p, argv, quick={"tokens": 16, "runs": 2, "stream_tokens": 30})

    from rustaid.testing.synthetic import SMOLLM2_135M, TINY

    big = common.synthetic_model(SMOLLM2_135M, "smollm2-135m-synthetic", "Q8_0")
    tiny = common.synthetic_model(TINY, "tiny-synthetic", "F32", seed=1)
    with served([big, tiny], args.threads) as (d, bus):
        load = common.ForeignLoad(d.proc.pid)
        load.start()
        r = asyncio.run(measure(args, d, bus, big.stem.lower(), tiny.stem.lower()))
        foreign = load.stop()
    dbus_s, grpc_s = common.median(r["unary"]["dbus"]), common.median(r["unary"]["grpc"])
    ratio = dbus_s / grpc_s
    print(
        f"Generate, {args.tokens} tokens, SmolLM2-135M shapes (Q8_0), {args.threads} threads,"
        f" {args.runs} rounds; other load {foreign:.2f} cores"
    )
    print(
        common.table(
            ["path", "median ms", "min ms", "max ms"],
            [
                [arm, common.median(v) * 1000, min(v) * 1000, max(v) * 1000]
                for arm, v in r["unary"].items()
            ],
        )
    )
    verdict = "OK" if ratio <= TARGET_RATIO else "ABOVE TARGET"
    print(
        f"D-Bus / gRPC: {ratio:.3f}x (target <= {TARGET_RATIO}x: {verdict}); "
        f"same text: {r['same_text']}\n"
    )
    rows = []
    for label, rates in r["streams"].items():
        dm, gm = common.median(rates["dbus"]), common.median(rates["grpc"])
        rows.append([label, dm, gm, dm / gm])
    print("Streaming: text pieces per second received by the client (median)")
    print(common.table(["model", "D-Bus Token signals/s", "gRPC stream chunks/s", "ratio"], rows))
    common.write_json(
        args.json,
        {
            "machine": common.machine(),
            "tokens": args.tokens,
            "runs": args.runs,
            "foreign_cores": foreign,
            "generate_s": {k: common.spread(v) for k, v in r["unary"].items()},
            "generate_ratio": ratio,
            "same_text": r["same_text"],
            "stream_per_s": {
                label: {k: common.spread(v) for k, v in rates.items()}
                for label, rates in r["streams"].items()
            },
        },
        figures(r, args.tokens),
    )
    return 0


def figures(r: dict[str, Any], tokens: int) -> list[dict[str, Any]]:
    """The figures of docs/benchmarks.md: D-Bus against gRPC on the same daemon."""
    out = [
        common.figure(
            f"Generate over D-Bus, {tokens} tokens (median)",
            common.median(r["unary"]["dbus"]) * 1000,
            "ms",
            peer="GenerateService.Generate over gRPC",
            peer_value=common.median(r["unary"]["grpc"]) * 1000,
            target=f"<= {TARGET_RATIO}",
            on="ratio",
            note="same text" if r["same_text"] else "TEXT DIFFERS",
        )
    ]
    for label, rates in r["streams"].items():
        out.append(
            common.figure(
                f"streamed pieces/s over D-Bus signals, {label} model",
                common.median(rates["dbus"]),
                "/s",
                peer="gRPC GenerateStream",
                peer_value=common.median(rates["grpc"]),
            )
        )
    return out


if __name__ == "__main__":
    raise SystemExit(main())
