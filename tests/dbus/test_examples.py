"""Every D-Bus example of README.md and docs/dbus.md, run as written by bash from a
fresh environment, against a daemon serving the real chat model (SmolLM2) and a
collection `default` of real embeddings (MiniLM) on a private session bus."""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from rustaid.testing import real_model as real
from rustaid.testing.daemon import DaemonProcess, run_daemon
from rustaid.testing.dbus import PrivateBus
from tests.dbus.conftest import need
from tests.rag.conftest import MINILM, link_embedding_model, needs_minilm

REPO = Path(__file__).resolve().parents[2]
pytestmark = needs_minilm


def dbus_examples(doc: Path) -> list[str]:
    """The ```sh blocks of `doc` that talk to org.rustai.Daemon1 or run a D-Bus client
    (not the ones that need root: sudo)."""
    blocks = re.findall(r"```sh\n(.*?)```", doc.read_text(), re.S)
    return [
        b for b in blocks if ("org.rustai.Daemon1" in b or "clients/dbus/" in b) and "sudo" not in b
    ]


EXAMPLES = [
    pytest.param(block, id=f"{doc}-{i}")
    for doc in ("README.md", "docs/dbus.md")
    for i, block in enumerate(dbus_examples(REPO / doc))
]


@pytest.fixture(scope="module")
def real_served(
    tmp_path_factory: pytest.TempPathFactory, real_model: Path, session_bus: PrivateBus
) -> Iterator[DaemonProcess]:
    data_dir = tmp_path_factory.mktemp("dbus-examples")
    real.place(real_model, data_dir / "models")
    link_embedding_model(data_dir, MINILM, "minilm")
    manuals = data_dir / "manuals"
    manuals.mkdir()
    (manuals / "install.md").write_text(
        "# Installing\n\nTo install it, run `sudo apt install ./rustaid.deb`, then "
        "start the service with `systemctl --user start rustaid`.\n"
    )
    with run_daemon(data_dir, env=session_bus.env()) as daemon:
        r = subprocess.run(
            [
                str(Path(sys.executable).with_name("rustaictl")),
                "--address",
                daemon.address,
                "rag",
                "index",
                str(manuals),
            ],
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert r.returncode == 0, r.stderr
        yield daemon


def test_the_docs_have_dbus_examples() -> None:
    assert len(dbus_examples(REPO / "README.md")) >= 1
    assert len(dbus_examples(REPO / "docs" / "dbus.md")) >= 4


@pytest.mark.parametrize("block", EXAMPLES)
def test_example_runs_as_written(
    block: str, real_served: DaemonProcess, session_bus: PrivateBus
) -> None:
    need("gdbus")
    need("busctl")
    env = {
        # A desktop user's login shell: the distribution's python3, gdbus and busctl.
        "PATH": "/usr/local/bin:/usr/bin:/bin",
        "HOME": str(real_served.data_dir),
        **session_bus.env(),
    }
    proc = subprocess.Popen(
        ["bash", "-e", "-c", block],
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        out, err = proc.communicate(timeout=240)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)  # a `gdbus monitor &` left behind
    assert proc.returncode == 0, f"{block}\n--- stdout\n{out}\n--- stderr\n{err}"
    assert out.strip(), block
    assert "org.rustai.Daemon1.Error" not in out + err, out + err
    if ".Search " in block or ".Ask " in block:
        assert "'text': <" in out, out  # passages of the indexed manual were found
    if "detach" in block:
        # gdbus monitor showed the generation's broadcast signals, and its text was read.
        assert ".Generation.Token (" in out and ".Generation.Finished (" in out
        assert "InterfacesAdded" in out
