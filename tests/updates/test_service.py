"""UpdatesService and `rustaictl updates` against a real daemon process, a real HTTP
server and real keys; bad input gets the right status code and a message."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
from google.rpc import error_details_pb2, status_pb2
from rustaid_client.cli import main

from rustaid.api.v1 import updates_pb2
from rustaid.api.v1 import updates_pb2_grpc as updates_grpc
from rustaid.testing.daemon import DaemonProcess, run_daemon
from rustaid.updates.download import sha256_file
from tests.updates.conftest import Key, Publisher, updates_config, write_config
from tests.updates.server import serve

P = updates_pb2


@dataclass
class Served:
    daemon: DaemonProcess
    publisher: Publisher
    stub: updates_grpc.UpdatesServiceStub
    data: Path


@pytest.fixture(scope="module")
def served(
    tmp_path_factory: pytest.TempPathFactory, keys: list[Key], models: dict[str, Path]
) -> Iterator[Served]:
    root = tmp_path_factory.mktemp("service")
    (root / "repo").mkdir()
    with serve(root / "repo") as server:
        publisher = Publisher(root / "repo", server, keys)
        data = root / "data"
        write_config(data, updates_config(server.url, keys[:1]))
        with run_daemon(data) as daemon:
            channel = grpc.insecure_channel(daemon.address)
            yield Served(daemon, publisher, updates_grpc.UpdatesServiceStub(channel), data)
            channel.close()


def details(error: grpc.RpcError) -> tuple[str, list[str]]:
    """(ErrorInfo reason, BadRequest fields) of a rich status."""
    reason, fields = "", []
    for key, value in error.trailing_metadata() or ():  # type: ignore[attr-defined]
        if key == "grpc-status-details-bin":
            for detail in status_pb2.Status.FromString(value).details:
                if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
                    info = error_details_pb2.ErrorInfo()
                    detail.Unpack(info)
                    reason = info.reason
                elif detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
                    bad = error_details_pb2.BadRequest()
                    detail.Unpack(bad)
                    fields = [v.field for v in bad.field_violations]
    return reason, fields


def test_apply_streams_progress_then_status_history_and_rollback(
    served: Served, models: dict[str, Path]
) -> None:
    stub, publisher = served.stub, served.publisher
    publisher.release(models["v1"], "1.0")
    (update,) = stub.CheckUpdates(P.CheckUpdatesRequest()).updates
    assert (update.artifact_id, update.kind, update.available_version) == (
        "chat",
        P.ARTIFACT_KIND_MODEL,
        "1.0",
    )
    assert update.in_rollout and update.size_bytes == models["v1"].stat().st_size
    applied = stub.ApplyUpdate(P.ApplyUpdateRequest(wait=True))
    assert [r.outcome for r in applied.records] == [P.UPDATE_PHASE_COMMITTED]

    publisher.release(models["v2"], "2.0")
    watch = stub.WatchUpdates(P.WatchUpdatesRequest())
    first = next(watch)  # the current status: subscribed from here on
    assert first.status.phase == P.UPDATE_PHASE_COMMITTED
    seen: list[P.UpdateStatus] = []

    def follow() -> None:
        for event in watch:
            seen.append(event.status)
            if event.status.phase == P.UPDATE_PHASE_COMMITTED and event.status.version == "2.0":
                return

    follower = threading.Thread(target=follow)
    follower.start()
    applied = stub.ApplyUpdate(P.ApplyUpdateRequest(artifact_ids=["chat"], wait=True))
    follower.join(30)
    watch.cancel()
    (record,) = applied.records
    assert (record.from_version, record.to_version, record.kind) == ("1.0", "2.0", 1)
    assert applied.status.phase == P.UPDATE_PHASE_COMMITTED
    phases = [s.phase for s in seen if s.update_id == record.update_id]
    order = [
        P.UPDATE_PHASE_DOWNLOADING,
        P.UPDATE_PHASE_VERIFYING,
        P.UPDATE_PHASE_APPLYING,
        P.UPDATE_PHASE_HEALTH_CHECK,
        P.UPDATE_PHASE_COMMITTED,
    ]
    assert [p for p in dict.fromkeys(phases)] == order
    downloading = [s for s in seen if s.phase == P.UPDATE_PHASE_DOWNLOADING]
    assert downloading[-1].bytes_done == downloading[-1].bytes_total == models["v2"].stat().st_size

    status = stub.GetUpdateStatus(P.GetUpdateStatusRequest())
    assert status.metadata_version == 2 and status.channel == "stable"
    assert status.device_id == "device-under-test"
    (installed,) = status.installed
    assert (installed.version, installed.previous_version, installed.path) == (
        "2.0",
        "1.0",
        "models/chat.gguf",
    )
    assert status.status.HasField("last_check_time")

    rolled = stub.Rollback(P.RollbackRequest(artifact_id="chat")).record
    assert (rolled.from_version, rolled.to_version, rolled.outcome) == (
        "2.0",
        "1.0",
        P.UPDATE_PHASE_ROLLED_BACK,
    )
    assert sha256_file((served.data / "models" / "chat.gguf").resolve()) == sha256_file(
        models["v1"]
    )
    history = stub.ListHistory(P.ListHistoryRequest(limit=2)).records
    assert [r.outcome for r in history] == [P.UPDATE_PHASE_ROLLED_BACK, P.UPDATE_PHASE_COMMITTED]
    assert history[0].HasField("started_time") and history[0].HasField("finished_time")


@pytest.mark.parametrize(
    ("call", "code", "expected", "field"),
    [
        (
            lambda s: s.CheckUpdates(P.CheckUpdatesRequest(channel="Bad Channel")),
            grpc.StatusCode.INVALID_ARGUMENT,
            "channel 'Bad Channel' is not valid",
            "channel",
        ),
        (
            lambda s: s.CheckUpdates(P.CheckUpdatesRequest(channel="beta")),
            grpc.StatusCode.NOT_FOUND,
            "channel 'beta' is not in the release metadata",
            "",
        ),
        (
            lambda s: s.ApplyUpdate(P.ApplyUpdateRequest(artifact_ids=["../../etc/passwd"])),
            grpc.StatusCode.INVALID_ARGUMENT,
            "artifact id '../../etc/passwd' is not valid",
            "artifact_ids[0]",
        ),
        (
            lambda s: s.ApplyUpdate(P.ApplyUpdateRequest(artifact_ids=["nope"])),
            grpc.StatusCode.NOT_FOUND,
            "'nope' is not in channel stable",
            "",
        ),
        (
            lambda s: s.Rollback(P.RollbackRequest()),
            grpc.StatusCode.INVALID_ARGUMENT,
            "artifact_id is empty",
            "artifact_id",
        ),
        (
            lambda s: s.Rollback(P.RollbackRequest(artifact_id="nope")),
            grpc.StatusCode.NOT_FOUND,
            "'nope' is not managed by the updater; managed: chat",
            "",
        ),
        (
            lambda s: s.ListHistory(P.ListHistoryRequest(limit=5000)),
            grpc.StatusCode.INVALID_ARGUMENT,
            "limit must be at most 1000",
            "limit",
        ),
    ],
)
def test_bad_input(
    served: Served, call: object, code: grpc.StatusCode, expected: str, field: str
) -> None:
    with pytest.raises(grpc.RpcError) as e:
        call(served.stub)  # type: ignore[operator]
    assert e.value.code() == code  # type: ignore[attr-defined]
    assert expected in e.value.details()  # type: ignore[attr-defined]
    if field:
        assert details(e.value)[1] == [field]


def test_tampered_metadata_is_failed_precondition_with_a_reason(
    served: Served, models: dict[str, Path]
) -> None:
    publisher = served.publisher
    publisher.release(models["v3"], "3.0")
    doc = publisher.metadata()
    doc["signed"]["channels"]["stable"][0]["version"] = "9.0"
    publisher.write_metadata(doc)
    with pytest.raises(grpc.RpcError) as e:
        served.stub.ApplyUpdate(P.ApplyUpdateRequest(wait=True))
    assert e.value.code() == grpc.StatusCode.FAILED_PRECONDITION  # type: ignore[attr-defined]
    assert details(e.value)[0] == "METADATA_SIGNATURE_INVALID"
    status = served.stub.GetUpdateStatus(P.GetUpdateStatusRequest())
    assert status.status.phase == P.UPDATE_PHASE_FAILED
    assert "do not match the content" in status.status.message
    assert status.installed[0].version == "1.0"  # still serving what it had
    publisher.release(models["v3"], "3.0")  # a correctly signed metadata again


def test_cli_updates(
    served: Served, models: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    address = served.daemon.address
    assert main(["--address", address, "updates", "check"]) == 0
    out = capsys.readouterr().out
    assert "chat" in out and "1.0" in out and "3.0" in out
    assert main(["--address", address, "updates", "apply"]) == 0
    out, err = capsys.readouterr()
    assert "downloading chat 3.0 [" in err and "100%" in err  # the progress bar
    assert "health check chat 3.0" in err
    assert "chat 1.0 -> 3.0: committed" in out
    assert main(["--address", address, "updates", "status"]) == 0
    out = capsys.readouterr().out
    assert "phase:" in out and "committed" in out and "models/chat.gguf" in out
    assert main(["--address", address, "updates", "history", "--limit", "1"]) == 0
    assert "committed" in capsys.readouterr().out
    assert main(["--address", address, "updates", "rollback", "chat"]) == 0
    assert "chat 3.0 -> 1.0: rolled back" in capsys.readouterr().out
    assert main(["--address", address, "updates", "rollback", "nope"]) == 1
    assert "NOT_FOUND" in capsys.readouterr().err
    # An artifact that fails its health check: exit 1, the reason on stdout.
    served.publisher.release(models["broken"], "4.0")
    assert main(["--address", address, "updates", "apply", "chat"]) == 1
    out = capsys.readouterr().out
    assert "chat 1.0 -> 4.0: rolled back: " in out and "GGUF" in out


def test_cli_release_workflow(
    tmp_path: Path, models: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    repo = str(tmp_path / "repo")
    assert main(["release", "keygen", str(tmp_path / "k1")]) == 0
    assert "ed25519:" in capsys.readouterr().out
    assert (tmp_path / "k1.key").stat().st_mode & 0o777 == 0o600
    assert main(["release", "keygen", str(tmp_path / "k1")]) == 1  # never overwrites a key
    assert "already exists" in capsys.readouterr().err
    args = ["release", "add", str(models["v1"]), "--channel", "stable", "--version", "1.0"]
    assert main([*args, "--id", "chat", "--rollout", "10%", "--repo", repo]) == 0
    assert "rollout 10%" in capsys.readouterr().out
    assert main(["release", "sign", "--key", str(tmp_path / "k1.key"), "--repo", repo]) == 0
    assert "1 signature(s)" in capsys.readouterr().out
    assert main(["release", "verify", repo, "--key", str(tmp_path / "k1.pub")]) == 0
    out = capsys.readouterr().out
    assert "stable/chat 1.0: ok" in out and "ok: devices trusting" in out
    # Verified against another key: refused, exit 1.
    assert main(["release", "keygen", str(tmp_path / "k2")]) == 0
    capsys.readouterr()
    assert main(["release", "verify", repo, "--key", str(tmp_path / "k2.pub")]) == 1
    assert "does not trust" in capsys.readouterr().err
    # Usage errors: exit 2 with what to fix.
    assert main([*args, "--rollout", "150%", "--repo", repo]) == 2
    assert "whole percentage from 0% to 100%" in capsys.readouterr().err
    assert main(["release", "verify", repo]) == 2
    assert "--key" in capsys.readouterr().err


def test_progress_bar_on_a_terminal() -> None:
    import io

    from rustaid_client.cli import ProgressBar

    out = io.StringIO()
    bar = ProgressBar(out, tty=True)
    total = 4 << 20
    for done in (0, total // 2, total):
        bar.update(
            P.UpdateStatus(
                phase=P.UPDATE_PHASE_DOWNLOADING,
                artifact_id="chat",
                version="2.0",
                bytes_done=done,
                bytes_total=total,
                update_id="u",
            )
        )
    bar.update(P.UpdateStatus(phase=P.UPDATE_PHASE_VERIFYING, artifact_id="chat", version="2.0"))
    bar.close()
    text = out.getvalue()
    assert "\r\x1b[K" in text  # redrawn in place
    assert "downloading chat 2.0 [###############---------------]  50% 2.0 MiB/4.0 MiB" in text
    assert "[##############################] 100%" in text
    assert text.endswith("verifying chat 2.0\n")
