"""IndexFileStream: the daemon tells how far indexing a document has come, chunk by
chunk, then gives the result; `rustaictl rag index` shows it on its progress bar while
a file is being indexed. A real daemon with the tiny ONNX embedding model."""

from __future__ import annotations

import sys
from pathlib import Path

import grpc
import pexpect

from rustaid.api.v1 import rag_pb2
from tests.rag.conftest import RagStubs, rpc_error
from tests.rag.test_service import create

RUSTAICTL = str(Path(sys.executable).with_name("rustaictl"))
# Chunks of 32 tokens (the fixture's chunk_size): a few hundred of them.
LONG = "\n\n".join(f"Paragraph {i}: the cat sat on the mat near door {i}." * 3 for i in range(300))


def stream(stubs: RagStubs, **fields: object) -> list[rag_pb2.IndexFileStreamResponse]:
    file = rag_pb2.IndexFileRequest(**fields)  # type: ignore[arg-type]
    request = rag_pb2.IndexFileStreamRequest(file=file)
    return list(stubs.rag.IndexFileStream(request, timeout=120))


def test_progress_comes_chunk_by_chunk_then_the_result(rag_daemon: RagStubs) -> None:
    create(rag_daemon, "progress")
    events = stream(rag_daemon, collection="progress", content=LONG.encode(), filename="long.txt")
    *progress, last = events
    assert last.WhichOneof("event") == "done"
    done = last.done
    assert done.chunks_indexed > 100 and not done.unchanged
    assert progress and all(e.WhichOneof("event") == "progress" for e in progress)
    counts = [e.progress.chunks_done for e in progress]
    assert counts == sorted(counts) and 0 < counts[0] < done.chunks_indexed
    assert {e.progress.chunks_total for e in progress} == {done.chunks_indexed}
    # The same document again: nothing to embed, the result at once.
    (again,) = stream(rag_daemon, collection="progress", content=LONG.encode(), filename="long.txt")
    assert again.done.unchanged and again.done.document_id == done.document_id


def test_bad_index_streams_say_what_to_fix(rag_daemon: RagStubs) -> None:
    e = rpc_error(lambda: stream(rag_daemon, collection="progress"))
    assert e.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "give the file" in (e.details() or "")
    e = rpc_error(lambda: stream(rag_daemon, collection="nowhere", content=b"text"))
    assert e.code() == grpc.StatusCode.NOT_FOUND
    assert "nowhere" in (e.details() or "")


def test_the_progress_bar_moves_while_a_file_is_indexed(
    rag_daemon: RagStubs, tmp_path: Path
) -> None:
    document = tmp_path / "long.md"
    document.write_text(LONG)
    address = rag_daemon.daemon.address
    child = pexpect.spawn(
        RUSTAICTL, ["--address", address, "rag", "index", str(document), "-c", "bar"],
        encoding="utf-8", timeout=120, dimensions=(24, 160),
    )  # fmt: skip
    # Drawn while the only file is still being indexed: chunks counted, no file done.
    child.expect(r"0/1 files, [1-9]\d* chunks")
    child.expect(r"bar: 1 indexed \((\d+) chunks\)")
    child.expect(pexpect.EOF)
    child.close()
    assert child.exitstatus == 0
