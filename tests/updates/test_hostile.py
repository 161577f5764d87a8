"""The updater against a hostile or broken world, through a real daemon process: a
server that trickles, a full disk (a real tmpfs), oversized metadata, and a client
that cancels. No update hangs, and the status always leaves `downloading`."""

from __future__ import annotations

import concurrent.futures
import contextlib
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from rustaid_client.cli import main

from rustaid.api.v1 import updates_pb2
from rustaid.api.v1 import updates_pb2_grpc as updates_grpc
from rustaid.testing.daemon import run_daemon
from tests.updates.conftest import (
    Key,
    Publisher,
    fill,
    small_disk,
    updates_config,
    write_config,
)
from tests.updates.server import serve
from tests.updates.test_service import details

P = updates_pb2


@contextlib.contextmanager
def updater(
    data: Path, publisher: Publisher, keys: list[Key], **config: Any
) -> Iterator[tuple[updates_grpc.UpdatesServiceStub, str]]:
    write_config(data, updates_config(publisher.url, keys[:1], **config))
    with run_daemon(data) as daemon, grpc.insecure_channel(daemon.address) as channel:
        yield updates_grpc.UpdatesServiceStub(channel), daemon.address


@pytest.fixture
def publisher(tmp_path: Path, keys: list[Key]) -> Iterator[Publisher]:
    (tmp_path / "repo").mkdir()
    with serve(tmp_path / "repo") as server:
        yield Publisher(tmp_path / "repo", server, keys)


def status(stub: updates_grpc.UpdatesServiceStub) -> updates_pb2.UpdateStatus:
    return stub.GetUpdateStatus(P.GetUpdateStatusRequest()).status


def wait_for(predicate: Callable[[], bool], within: float = 30) -> None:
    deadline = time.monotonic() + within
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def staging(data: Path) -> list[Path]:
    return list((data / "state" / "updates" / "staging").iterdir())


def test_a_trickling_server_meets_the_deadline_and_a_client_can_cancel(
    tmp_path: Path,
    publisher: Publisher,
    keys: list[Key],
    models: dict[str, Path],
    capsys: pytest.CaptureFixture[str],
) -> None:
    data = tmp_path / "data"
    publisher.release(models["v1"], "1.0")
    # 10 kB/s is above the minimum rate, and the model would take a minute.
    publisher.server.fault(publisher.artifact_path("1.0"), "trickle", 1000, times=-1)
    with updater(data, publisher, keys, download_deadline=3, download_min_rate=1000) as (
        stub,
        address,
    ):
        with pytest.raises(grpc.RpcError) as e:
            stub.CancelUpdate(P.CancelUpdateRequest())
        assert e.value.code() == grpc.StatusCode.FAILED_PRECONDITION  # type: ignore[attr-defined]
        assert details(e.value)[0] == "NO_UPDATE_RUNNING"

        started = stub.ApplyUpdate(P.ApplyUpdateRequest())
        assert started.status.phase == P.UPDATE_PHASE_DOWNLOADING
        wait_for(lambda: status(stub).bytes_done > 0)
        t0 = time.monotonic()
        assert main(["--address", address, "updates", "cancel"]) == 0
        assert time.monotonic() - t0 < 2
        assert "failed: chat 1.0 not installed: cancelled (CancelUpdate)" in capsys.readouterr().out
        cancelled = status(stub)
        assert cancelled.phase == P.UPDATE_PHASE_FAILED
        assert "cancelled (CancelUpdate)" in cancelled.message
        assert staging(data) == []

        t0 = time.monotonic()
        done = stub.ApplyUpdate(P.ApplyUpdateRequest(wait=True))
        assert time.monotonic() - t0 < 15
        (record,) = done.records
        assert record.outcome == P.UPDATE_PHASE_FAILED
        assert "not finished by the download deadline" in record.message
        assert status(stub).phase == P.UPDATE_PHASE_FAILED and staging(data) == []


def test_oversized_metadata_is_data_loss_naming_the_limit(
    tmp_path: Path, publisher: Publisher, keys: list[Key], models: dict[str, Path]
) -> None:
    publisher.release(models["v1"], "1.0")
    size = publisher.repo.metadata_path.stat().st_size
    with updater(tmp_path / "data", publisher, keys, max_metadata_size=size - 1) as (stub, _):
        with pytest.raises(grpc.RpcError) as e:
            stub.CheckUpdates(P.CheckUpdatesRequest())
        assert e.value.code() == grpc.StatusCode.DATA_LOSS  # type: ignore[attr-defined]
        assert f"more than the {size - 1} bytes max_metadata_size" in e.value.details()  # type: ignore[attr-defined]
        assert details(e.value)[0] == "METADATA_TOO_LARGE"
        assert status(stub).phase == P.UPDATE_PHASE_FAILED


def test_a_full_disk_mid_download_frees_the_partial_file_and_is_resource_exhausted(
    tmp_path: Path, publisher: Publisher, keys: list[Key], models: dict[str, Path]
) -> None:
    data = tmp_path / "data"
    publisher.release(models["v1"], "1.0")
    server = publisher.server
    server.fault(publisher.artifact_path("1.0"), "hold", 100_000)
    with (
        small_disk(data / "state" / "updates", "80m") as disk,
        updater(data, publisher, keys) as (stub, _),
    ):
        with concurrent.futures.ThreadPoolExecutor(1) as pool:
            call = pool.submit(stub.ApplyUpdate, P.ApplyUpdateRequest(wait=True))
            assert server.holding.wait(30)
            filler = fill(disk)  # the disk fills up while the download runs
            server.release.set()
            with pytest.raises(grpc.RpcError) as e:
                call.result(timeout=30)
        assert e.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED  # type: ignore[attr-defined]
        assert details(e.value)[0] == "DISK_FULL"
        assert "the disk is full" in e.value.details()  # type: ignore[attr-defined]
        now = status(stub)
        assert now.phase == P.UPDATE_PHASE_FAILED and "disk is full" in now.message
        assert staging(data) == []  # the partial download is gone
        # Still full: refused before downloading, with the same answer.
        fill(disk)
        with pytest.raises(grpc.RpcError) as e:
            stub.ApplyUpdate(P.ApplyUpdateRequest(wait=True))
        assert e.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED  # type: ignore[attr-defined]
        assert "not enough disk space" in e.value.details()  # type: ignore[attr-defined]
        assert status(stub).phase == P.UPDATE_PHASE_FAILED and staging(data) == []
        # Space comes back: the same update goes through, no restart needed.
        filler.unlink()
        done = stub.ApplyUpdate(P.ApplyUpdateRequest(wait=True))
        assert [r.outcome for r in done.records] == [P.UPDATE_PHASE_COMMITTED]
