"""Over HTTP, the device policy's caps are reported (the `rustaid` field and the
`x-rustaid-adjustments` header); while the device is critically hot, generation answers
503 with Retry-After (as gRPC health says NOT_SERVING for GenerateService) until it
cooled down. The thermal zone is a fake sysfs tree (the system boundary)."""

from __future__ import annotations

from pathlib import Path

import httpx

from rustaid.testing.daemon import run_daemon
from tests.conftest import add_model
from tests.power.bus import eventually
from tests.power.fakesys import FakeDevice
from tests.rag.conftest import write_config


def test_critical_heat_is_503_until_it_cools(tmp_path: Path, model_files: dict[str, Path]) -> None:
    dev = FakeDevice(tmp_path / "device")
    dev.zone(0, "cpu-thermal", 50.0, [("passive", 80), ("critical", 100)])
    data = tmp_path / "data"
    add_model(data, model_files["tiny"])
    write_config(
        data,
        'http_listen = ["127.0.0.1:0"]\n[power]\n'
        + dev.toml()
        + "dbus = false\npoll_idle_s = 0.2\n",
    )
    chat = {"model": "tiny", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}
    with run_daemon(data) as daemon:
        url = daemon.http_url()
        assert httpx.post(url + "/v1/chat/completions", json=chat).status_code == 200
        # Hot, not critical: served, with max_tokens capped and the cap reported.
        dev.temp(0, 85.0)
        long = {**chat, "max_tokens": 1000}

        def capped() -> httpx.Response | None:
            reply = httpx.post(url + "/v1/chat/completions", json=long, timeout=60)
            return reply if reply.json()["rustaid"]["adjustments"] else None

        eventually(capped, timeout=20)
        reply = capped()
        assert reply is not None and reply.json()["usage"]["completion_tokens"] <= 200
        assert "max_tokens" in reply.headers["x-rustaid-adjustments"]
        ollama_hot = httpx.post(url + "/api/chat", json={**long, "stream": False}).json()
        assert any("max_tokens" in a for a in ollama_hot["rustaid"]["adjustments"])
        dev.temp(0, 97.5)
        eventually(lambda: httpx.get(url + "/health").status_code == 503, timeout=20)
        hot = httpx.post(url + "/v1/chat/completions", json=chat)
        assert hot.status_code == 503 and hot.headers["retry-after"] == "30"
        assert "critically hot" in hot.json()["error"]["message"]
        ollama = httpx.post(url + "/api/chat", json={**chat, "stream": False})
        assert ollama.status_code == 503 and "critically hot" in ollama.json()["error"]
        assert httpx.get(url + "/v1/models").status_code == 200  # listings still answer
        dev.temp(0, 60.0)
        eventually(lambda: httpx.get(url + "/health").status_code == 200, timeout=20)
        assert httpx.post(url + "/v1/chat/completions", json=chat).status_code == 200
