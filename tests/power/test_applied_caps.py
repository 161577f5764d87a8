"""The policy's caps are applied, not only reported: the thread count of the running
llama.cpp context follows the power profile (measured from outside, per thread)."""

from __future__ import annotations

import contextlib
import itertools
import threading
import time
from pathlib import Path

import psutil
from rustaid_client.client import Client, RustaidError

from rustaid.testing.daemon import DaemonProcess, run_daemon
from tests.conftest import add_model
from tests.power.fakesys import FakeDevice


def write_power(data: Path, dev: FakeDevice, *, share_cpu: bool = True, extra: str = "") -> None:
    """[power] reading `dev`, no system bus; share_cpu off where a test counts threads
    (a busy machine would otherwise take one away)."""
    (data / "config").mkdir(parents=True, exist_ok=True)
    lines = f"[power]\n{dev.toml()}dbus = false\nshare_cpu = {str(share_cpu).lower()}\n{extra}"
    (data / "config" / "rustaid.toml").write_text(lines)


_stories = itertools.count()


def cpu_by_thread(pid: int) -> dict[int, float]:
    return {t.id: t.user_time + t.system_time for t in psutil.Process(pid).threads()}


def busy_threads(daemon: DaemonProcess, client: Client, model_id: str) -> tuple[int, list[str]]:
    """Threads that computed during one generation, and the adjustments reported."""
    before = cpu_by_thread(daemon.proc.pid)
    # The synthetic model computes a token in about a millisecond and the saving profiles
    # cap the reply at 64 tokens: a long prompt, new each time (no cached prefix), gives
    # the compute threads a share well clear of the event loop's and of a clock tick.
    prompt = f"Story {next(_stories)}. " + "Once upon a time there was a small daemon. " * 15
    done = client.generate(prompt, model_id, max_tokens=256, temperature=0.0)
    after = cpu_by_thread(daemon.proc.pid)
    used = sorted((after[t] - before.get(t, 0.0) for t in after), reverse=True)
    # Compute threads share a generation's work; the event loop and gRPC use far less.
    busy = [u for u in used if u >= max(0.05, used[0] / 4)]
    return len(busy), list(done.adjustments)


def widest(daemon: DaemonProcess, client: Client, model_id: str, tries: int = 3) -> int:
    """The most threads seen computing in up to `tries` generations. On a busy machine one
    compute thread can be left without a core for most of a generation (llama.cpp's other
    threads then take its share of the work), so a single count can read low."""
    most = 0
    for _ in range(tries):
        most = max(most, busy_threads(daemon, client, model_id)[0])
        if most >= 2:
            break
    return most


def test_the_profiles_thread_cap_reaches_the_running_context(
    tmp_path: Path, model_files: dict[str, Path]
) -> None:
    dev = FakeDevice(tmp_path / "device")
    data = tmp_path / "data"
    add_model(data, model_files["slow"])
    write_power(data, dev, share_cpu=False)
    env = {"RUSTAID_THREADS": "2"}
    with run_daemon(data, env=env) as daemon, Client(daemon.address, timeout=60) as client:
        client.set_power_profile("performance")
        _, adjustments = busy_threads(daemon, client, "slow")  # also loads the model
        assert not [a for a in adjustments if a.startswith("threads")]
        assert widest(daemon, client, "slow") == 2
        client.set_power_profile("ultra-saver")
        narrow, adjustments = busy_threads(daemon, client, "slow")
        assert any(a.startswith("threads 2 -> 1") for a in adjustments), adjustments
        assert narrow == 1
        client.set_power_profile("performance")  # back to the loaded count, no reload
        assert widest(daemon, client, "slow") == 2


def test_a_saving_profile_makes_the_router_pick_the_smaller_model(
    tmp_path: Path, model_files: dict[str, Path]
) -> None:
    dev = FakeDevice(tmp_path / "device")
    data = tmp_path / "data"
    add_model(data, model_files["slow"])  # the larger file
    add_model(data, model_files["tiny"])
    write_power(data, dev, share_cpu=False)
    with run_daemon(data) as daemon, Client(daemon.address, timeout=60) as client:
        client.set_power_profile("performance")
        assert client.select_model().model_id == "slow"  # a tie: the id decides
        client.set_power_profile("ultra-saver")
        picked = client.select_model()
        assert picked.model_id == "tiny"
        reasons = next(c.reasons for c in picked.candidates if c.model_id == "tiny")
        assert any("smaller model preferred: power profile ultra_saver" in r for r in reasons)
        # The request without a model id goes where SelectModel said.
        assert client.generate("Hello", max_tokens=4).model_id == "tiny"


def test_a_running_generation_slows_down_as_the_device_heats_up(
    tmp_path: Path, model_files: dict[str, Path]
) -> None:
    """Mid-generation: serious heat takes a compute thread away, critical heat adds a
    rest after every token (the daemon's CPU use drops) without cutting it short."""
    dev = FakeDevice(tmp_path / "device")
    dev.zone(0, "cpu-thermal", 50.0, [("passive", 80), ("critical", 100)])
    data = tmp_path / "data"
    add_model(data, model_files["slow"])
    # The temperature jumps between states here: no forecast, the states themselves act
    # (tests/power/test_rising_heat.py covers acting on a fast rise).
    write_power(data, dev, share_cpu=False, extra="rise_horizon_s = 0\n")
    env = {"RUSTAID_THREADS": "2"}
    with run_daemon(data, env=env) as daemon, Client(daemon.address, timeout=120) as client:
        client.set_power_profile("performance")
        client.generate("Hi", "slow", max_tokens=2)  # loaded
        # A grammar that never completes: no end-of-text token can stop it early.
        stream = client.generate_stream(
            "Once upon a time", "slow", max_tokens=3500, grammar="root ::= [a-z ] root"
        )
        events: list[str] = []

        def read() -> None:
            with contextlib.suppress(RustaidError):
                for event in stream:
                    events.append(event.WhichOneof("event") or "")

        reader = threading.Thread(target=read, daemon=True)
        reader.start()

        def window(seconds: float = 1.0) -> dict[int, float]:
            """CPU seconds of each of the daemon's threads over `seconds`."""
            before = cpu_by_thread(daemon.proc.pid)
            time.sleep(seconds)
            after = cpu_by_thread(daemon.proc.pid)
            return {t: after[t] - before.get(t, 0.0) for t in after}

        while not events:
            time.sleep(0.02)
        nominal = window()
        # The two compute threads (llama.cpp's team) are the busiest by far.
        compute = sorted(nominal, key=nominal.__getitem__, reverse=True)[:2]
        a, b = (nominal[t] for t in compute)
        assert b >= a / 4, nominal  # both compute
        dev.temp(0, 85.0)  # serious: half the cores
        time.sleep(1.5)  # seen within a second, applied at the next token
        serious = window()
        a, b = sorted((serious.get(t, 0.0) for t in compute), reverse=True)
        assert b < a / 4, (serious, compute)  # one of them rests
        dev.temp(0, 97.5)  # critical: one thread and a rest after every token
        time.sleep(1.5)
        critical = window()
        assert sum(critical[t] for t in compute) < a / 3, (critical, a)
        assert reader.is_alive() and "done" not in events  # slowed, not cut short
        stream.cancel()
        reader.join(10)


def test_every_answer_carries_its_energy(tmp_path: Path, model_files: dict[str, Path]) -> None:
    dev = FakeDevice(tmp_path / "device")  # no battery: the engine's declared draw counts
    data = tmp_path / "data"
    add_model(data, model_files["tiny"])
    write_power(data, dev, share_cpu=False)
    with run_daemon(data) as daemon, Client(daemon.address, timeout=60) as client:
        r = client.generate("Hello", "tiny", max_tokens=8)
        seconds = (r.timings.prompt_eval_ms + r.timings.generation_ms) / 1000
        assert r.energy.basis == (
            f"4000 mW declared by plugin llama.cpp x {seconds:.2f} s of compute"
        )
        assert abs(r.energy.joules - 4.0 * seconds) < 0.01
        done = [e.done for e in client.generate_stream("Hello", "tiny", max_tokens=8)][-1]
        assert done.energy.joules > 0 and done.energy.basis.startswith("4000 mW declared")


def test_busy_neighbours_take_a_thread_away(tmp_path: Path, model_files: dict[str, Path]) -> None:
    """Another process keeps a core busy for seconds: the next generation computes with
    one thread fewer, says why, and GetSnapshot shows the neighbour's load."""
    import subprocess
    import sys

    dev = FakeDevice(tmp_path / "device")
    data = tmp_path / "data"
    add_model(data, model_files["slow"])
    write_power(data, dev)
    env = {"RUSTAID_THREADS": "2"}
    with run_daemon(data, env=env) as daemon, Client(daemon.address, timeout=60) as client:
        client.set_power_profile("performance")
        client.generate("Hi", "slow", max_tokens=1)  # loads the model (not measured)
        hog = subprocess.Popen([sys.executable, "-c", "while True: pass"])
        try:
            time.sleep(4.5)  # three quick samples, each with a busy neighbour
            snapshot = client.get_snapshot().snapshot
            assert snapshot.cpu.others_busy_cores >= 0.8, snapshot.cpu
            narrow, adjustments = busy_threads(daemon, client, "slow")
            assert any(a.startswith("threads 2 -> 1: other processes busy") for a in adjustments), (
                adjustments
            )
            assert narrow == 1
        finally:
            hog.kill()
            hog.wait()


def test_a_model_loads_within_the_profiles_context_and_batch(
    tmp_path: Path, model_files: dict[str, Path]
) -> None:
    dev = FakeDevice(tmp_path / "device")
    data = tmp_path / "data"
    add_model(data, model_files["slow"])  # trained context 4096
    write_power(data, dev, share_cpu=False)
    with run_daemon(data) as daemon, Client(daemon.address, timeout=60) as client:
        client.set_power_profile("ultra-saver")
        loaded = client.load_model("slow").model
        assert loaded.context_length == 1024  # UltraSaver's context
        client.unload_model("slow")
        client.set_power_profile("performance")
        assert client.load_model("slow").model.context_length == 4096
    log = (data / "daemon.log").read_text()
    assert "loading slow with context 1024, batch 32, 0 GPU layers: power profile" in log
