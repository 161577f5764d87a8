"""A full disk while indexing is an error, not a crash: the daemon's data folder on a
small tmpfs of its own, filled up with a file while documents are indexed. Indexing
answers RESOURCE_EXHAUSTED, searches keep working, the daemon stays up, and indexing
resumes once space is freed; acknowledged documents are all there."""

from __future__ import annotations

import os
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from rustaid.api.v1 import rag_pb2
from rustaid.testing.daemon import run_daemon
from tests.rag.conftest import RagStubs, link_embedding_model, write_config
from tests.rag.test_crash import collection, corpus, stream
from tests.services.test_limits import reason, retry_delay_s

CODE = grpc.StatusCode
TMPFS_MB = 160


@pytest.fixture
def small_disk() -> Iterator[Path]:
    """A tmpfs of TMPFS_MB MiB, mounted for this test (needs root)."""
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    mountpoint = Path(tempfile.mkdtemp(prefix="rustaid-disk-"))
    try:
        subprocess.run(
            ["mount", "-t", "tmpfs", "-o", f"size={TMPFS_MB}m,mode=0755", "tmpfs", str(mountpoint)],
            check=True,
            capture_output=True,
        )
    except subprocess.CalledProcessError as e:
        mountpoint.rmdir()
        pytest.skip(f"cannot mount a tmpfs here: {e.stderr.decode().strip()}")
    try:
        yield mountpoint
    finally:
        subprocess.run(["umount", "-l", str(mountpoint)], check=False)
        mountpoint.rmdir()


def fill(folder: Path, leave_bytes: int) -> Path:
    """A file taking all the free space of `folder`'s file system but `leave_bytes`."""
    st = os.statvfs(folder)
    free = st.f_bavail * st.f_frsize
    filler = folder / "filler"
    with filler.open("wb") as f:
        remaining = max(0, free - leave_bytes)
        block = b"\0" * (1 << 20)
        while remaining > 0:
            n = min(len(block), remaining)
            try:
                f.write(block[:n])
            except OSError:
                break
            remaining -= n
    return filler


def test_indexing_on_a_full_disk_is_refused_then_resumes(
    small_disk: Path, tiny_models: dict[str, Path]
) -> None:
    data_dir = small_disk / "data"
    link_embedding_model(data_dir, tiny_models["tiny"], "tiny")
    write_config(data_dir, '[rag]\nembedding_model = "embeddings/tiny"\n')
    docs = corpus()
    with run_daemon(data_dir) as d:
        stubs = RagStubs(d)
        stubs.rag.CreateCollection(rag_pb2.CreateCollectionRequest(name="notes"))
        first = stubs.rag.IndexDocuments(stream("notes", docs[:50]))
        acknowledged = collection(stubs, "notes").points_count
        assert acknowledged == first.chunks_indexed > 0
        filler = fill(small_disk, leave_bytes=256 << 10)
        failures = []
        for _ in range(3):  # however often it is tried, it is refused cleanly
            with pytest.raises(grpc.RpcError) as info:
                stubs.rag.IndexDocuments(stream("notes", docs[50:]))
            failures.append(info.value)
        for err in failures:
            assert err.code() == CODE.RESOURCE_EXHAUSTED, err.details()
            assert reason(err) == "DISK_FULL"
            assert "is full: it has 0." in err.details(), err.details()
            assert "keeps at least 64 MiB free" in err.details()
            assert "Free some space there, then retry" in err.details()
            assert retry_delay_s(err) == 30
        with pytest.raises(grpc.RpcError) as info:
            stubs.rag.CreateCollection(rag_pb2.CreateCollectionRequest(name="more"))
        assert info.value.code() == CODE.RESOURCE_EXHAUSTED, info.value.details()
        assert d.proc.poll() is None, d.stderr()
        # Reads keep working on the full disk.
        hits = stubs.rag.Search(rag_pb2.SearchRequest(collection="notes", query="cat")).hits
        assert hits
        assert collection(stubs, "notes").points_count >= acknowledged
        # Space returns: indexing resumes, without a restart.
        filler.unlink()
        stubs.rag.CreateCollection(rag_pb2.CreateCollectionRequest(name="more"))
        again = stubs.rag.IndexDocuments(stream("notes", docs))
        assert again.documents_indexed + again.documents_unchanged == len(docs)
        total = collection(stubs, "notes").points_count
        assert total > acknowledged
        stubs.channel.close()
    # And everything acknowledged is there after a restart.
    with run_daemon(data_dir) as d:
        stubs = RagStubs(d)
        assert collection(stubs, "notes").points_count == total
        stubs.channel.close()
