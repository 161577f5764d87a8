"""`rustaictl rag`: collections, indexing files and folders (and watching them), search,
grounded answers, embeddings and deletions."""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import grpc

from rustaid.api.v1 import (
    common_pb2,
    rag_pb2,
)
from rustaid_client.cli import output
from rustaid_client.cli.arguments import (
    Subparsers,
    command,
    count,
    generation_options,
    positive_float,
)
from rustaid_client.cli.generate import note_queued, options_from_args, print_stats, read_prompt
from rustaid_client.cli.models_pull import eta_text
from rustaid_client.cli.output import (
    EXIT_ERROR,
    PROG,
    UsageError,
    echo,
    friendly,
    note,
    print_json,
    table,
    to_dict,
)
from rustaid_client.client import (
    SEARCH_MODES,
    Client,
    ResponseStream,
    RustaidError,
    parse_filter,
)

# Values one filter condition may list (the daemon's limit).
MAX_ANY = 1024
DEFAULT_COLLECTION = "default"
# Files picked up when walking a folder (named files are always sent).
DOCUMENT_SUFFIXES = frozenset(
    (".txt", ".text", ".md", ".markdown", ".mdown", ".mkd", ".rst", ".org", ".log", ".csv",
     ".tsv", ".html", ".htm", ".xhtml", ".pdf", ".docx")
)  # fmt: skip


def _collection_row(c: rag_pb2.Collection) -> list[str]:
    building = " (indexing)" if c.index_building else ""
    return [
        c.name,
        c.embedding_model_id,
        str(c.dimension),
        friendly(rag_pb2.Distance, c.distance),
        c.vector_store,
        f"{c.points_count}",
        f"{c.indexed_points_count}{building}",
        c.error,
    ]


def cmd_rag_collections(client: Client, args: argparse.Namespace) -> int:
    response = client.list_collections()
    if args.json:
        print_json(response)
        return 0
    headers = ["NAME", "MODEL", "DIM", "DISTANCE", "STORE", "CHUNKS", "INDEXED", "ERROR"]
    table(headers, [_collection_row(c) for c in response.collections])
    return 0


def cmd_rag_create(client: Client, args: argparse.Namespace) -> int:
    response = client.create_collection(
        args.name, args.model, distance=args.distance, vector_store=args.store
    )
    if args.json:
        print_json(response)
    else:
        c = response.collection
        echo(
            f"created {c.name} ({c.embedding_model_id}, {c.dimension} dimensions, {c.vector_store}"
            + (f", {c.keyword_language} keywords)" if c.keyword_language else ")")
        )
    return 0


def cmd_rag_delete_collection(client: Client, args: argparse.Namespace) -> int:
    client.delete_collection(args.name)
    if args.json:
        output.stdout().write(json.dumps({"deleted": args.name}) + "\n")
    else:
        echo(f"deleted collection {args.name}")
    return 0


def _files(paths: Sequence[str]) -> list[Path]:
    """Named files, and the document files found under named folders (hidden ones
    skipped), in a stable order."""
    found: list[Path] = []
    for raw in paths:
        path = Path(raw)
        if path.is_dir():
            for root, dirs, names in os.walk(path):
                dirs[:] = sorted(d for d in dirs if not d.startswith("."))
                for name in sorted(names):
                    child = Path(root) / name
                    if not name.startswith(".") and child.suffix.lower() in DOCUMENT_SUFFIXES:
                        found.append(child)
        elif path.exists():
            found.append(path)
        else:
            raise UsageError(f"no such file or folder: {raw}")
    return found


class Progress:
    """A one-line progress bar on stderr (only when it is a terminal). It advances by
    bytes, so a large file counts for more than a small one, within a file by the chunks
    the daemon has embedded, and shows the indexing rate and the time left at that rate."""

    WIDTH = 24

    def __init__(self, total: int, enabled: bool, total_bytes: int = 0) -> None:
        self.total = total
        self.total_bytes = total_bytes
        self.enabled = enabled
        self.done = 0
        self.done_bytes = 0
        self.chunks = 0
        self.start = time.monotonic()

    def update(self, name: str, chunks: int, size: int = 0) -> None:
        """A file is done."""
        self.done += 1
        self.done_bytes += size
        self.chunks += chunks
        self._draw(name)

    def partial(self, name: str, size: int, chunks_done: int, chunks_total: int) -> None:
        """Within a file of `size` bytes: `chunks_done` of its `chunks_total` embedded."""
        part = chunks_done / chunks_total if chunks_total else 0.0
        self._draw(name, part, size * part, chunks_done)

    def _draw(self, name: str, files: float = 0.0, size: float = 0.0, chunks: int = 0) -> None:
        if not self.enabled:
            return
        fraction = (
            (self.done_bytes + size) / self.total_bytes
            if self.total_bytes
            else (self.done + files) / max(1, self.total)
        )
        filled = int(self.WIDTH * min(1.0, fraction))
        bar = "#" * filled + "-" * (self.WIDTH - filled)
        elapsed = time.monotonic() - self.start
        rate = (self.chunks + chunks) / elapsed if elapsed > 0 else 0.0
        left = elapsed * (1 - fraction) / fraction if 0 < fraction < 1 else 0.0
        eta = f", ETA {eta_text(left)}" if left else ""  # as `models pull` shows it
        line = (
            f"[{bar}] {self.done}/{self.total} files, {self.chunks + chunks} chunks "
            f"({rate:.0f}/s), {elapsed:.1f} s{eta}  {name}"
        )
        columns = shutil.get_terminal_size((100, 20)).columns
        err = output.stderr()
        err.write("\r" + line[: columns - 1].ljust(columns - 1))
        err.flush()

    def finish(self) -> None:
        if self.enabled and self.total:
            output.stderr().write("\n")
            output.stderr().flush()


def _indexed(
    stream: ResponseStream[rag_pb2.IndexFileStreamResponse],
    progress: Progress,
    name: str,
    size: int,
) -> rag_pb2.IndexFileResponse:
    """The result of one file's indexing, showing its progress chunk by chunk."""
    with stream:  # Ctrl-C cancels the call: the daemon stops indexing the file
        for event in stream:
            if event.WhichOneof("event") == "done":
                return event.done
            progress.partial(name, size, event.progress.chunks_done, event.progress.chunks_total)
    raise RustaidError(grpc.StatusCode.UNKNOWN, "the daemon ended the indexing without a result")


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:
        return 0


def _ensure_collection(client: Client, args: argparse.Namespace) -> bool:
    """Create the collection unless it exists (or --no-create); True when created."""
    names = {c.name for c in client.list_collections().collections}
    if args.collection in names:
        return False
    if args.no_create:
        raise UsageError(f"collection {args.collection!r} does not exist (and --no-create)")
    created = client.create_collection(args.collection, args.model).collection
    note(
        f"{PROG}: created collection {created.name} with embedding model "
        f"{created.embedding_model_id}"
    )
    return True


# Metadata listing the folders a file is in (all its parents, so the same whether the
# file was indexed alone or with its folder): `--prune` finds a folder's documents by it.
FOLDERS_KEY = "folders"


def _folder_of(path: Path, folders: Sequence[Path]) -> Path | None:
    resolved = path.resolve()
    return next((f for f in folders if resolved.is_relative_to(f)), None)


def _prune(client: Client, collection: str, folder: Path, kept: Sequence[Path]) -> int:
    """Delete the documents indexed from `folder` whose file is not in `kept` (deleted
    or renamed since); the number of chunks removed."""
    ids = sorted(str(p.resolve()) for p in kept)
    batches = [ids[i : i + MAX_ANY] for i in range(0, len(ids), MAX_ANY)]
    keep = [rag_pb2.Condition(key="document_id", any=rag_pb2.MatchAny(values=b)) for b in batches]
    where = rag_pb2.Condition(
        key=f"metadata.{FOLDERS_KEY}", value=rag_pb2.MatchValue(text=str(folder))
    )
    query = rag_pb2.Filter(must=[where], must_not=keep)
    return int(client.delete_documents(collection, filter=query).deleted)


def _metadata(pairs: Sequence[str]) -> dict[str, Any]:
    metadata: dict[str, Any] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise UsageError(f"--meta takes KEY=VALUE (got {pair!r})")
        metadata[key] = value
    return metadata


def cmd_rag_index(client: Client, args: argparse.Namespace) -> int:
    files = _files(args.paths)
    folders = [Path(p).resolve() for p in args.paths if Path(p).is_dir()]
    if args.prune and not folders:
        raise UsageError(
            "--prune needs a folder: it removes the deleted files of the folders given"
        )
    if not files and not args.prune:
        raise UsageError(
            f"no document files found (supported: {', '.join(sorted(DOCUMENT_SUFFIXES))})"
        )
    created = _ensure_collection(client, args)
    metadata = _metadata(args.meta)
    sizes = {f: _size(f) for f in files}
    progress = Progress(
        len(files),
        enabled=not args.json and output.stderr().isatty(),
        total_bytes=sum(sizes.values()),
    )
    indexed = unchanged = failed = 0
    try:
        for path in files:
            absolute = path.resolve()
            meta = metadata | {FOLDERS_KEY: [str(p) for p in absolute.parents]}
            try:
                if args.by_path:
                    stream = client.index_file_stream(
                        args.collection, absolute, metadata=meta,
                        chunk_size=args.chunk_size, chunk_overlap=args.chunk_overlap,
                    )  # fmt: skip
                else:
                    try:
                        content = absolute.read_bytes()
                    except OSError as e:
                        raise UsageError(f"cannot read {path}: {e.strerror or e}") from e
                    stream = client.index_file_stream(
                        args.collection, content=content, filename=absolute.name,
                        document_id=str(absolute), metadata=meta,
                        chunk_size=args.chunk_size, chunk_overlap=args.chunk_overlap,
                    )  # fmt: skip
                response = _indexed(stream, progress, path.name, sizes[path])
            except (RustaidError, UsageError) as e:
                if isinstance(e, RustaidError) and e.reason == "PATH_READING_OFF":
                    # Said once, not once per file; nothing was indexed, so a collection
                    # made for this run goes away again.
                    if created and not indexed + unchanged:
                        client.delete_collection(args.collection)
                    raise
                if isinstance(e, RustaidError) and e.code_name not in (
                    "INVALID_ARGUMENT",
                    "PERMISSION_DENIED",
                    "NOT_FOUND",
                ):
                    raise  # the daemon or the collection is in trouble: stop here
                failed += 1
                progress.update(path.name, 0, sizes[path])
                if args.json:
                    output.stdout().write(json.dumps({"file": str(path), "error": str(e)}) + "\n")
                else:
                    if progress.enabled:
                        output.stderr().write("\n")
                    note(f"{PROG}: {path}: {e}")
                continue
            if response.unchanged:
                unchanged += 1
            else:
                indexed += 1
            progress.update(path.name, response.chunks_indexed, sizes[path])
            if args.json:
                data = to_dict(response) | {"file": str(path)}
                output.stdout().write(json.dumps(data) + "\n")
    finally:
        progress.finish()
    pruned = 0
    if args.prune:
        for folder in folders:
            pruned += _prune(
                client, args.collection, folder, [f for f in files if _folder_of(f, [folder])]
            )
    if not args.json:
        elapsed = time.monotonic() - progress.start
        gone = f", {pruned} chunks of deleted files removed" if args.prune else ""
        echo(
            f"{args.collection}: {indexed} indexed ({progress.chunks} chunks), "
            f"{unchanged} unchanged, {failed} failed{gone}, in {elapsed:.1f} s"
        )
    elif args.prune:
        output.stdout().write(json.dumps({"pruned_chunks": pruned}) + "\n")
    return EXIT_ERROR if failed else 0


def _snapshot(folder: Path) -> dict[Path, tuple[float, int]]:
    """The document files under `folder` with their modification time and size."""
    found: dict[Path, tuple[float, int]] = {}
    for path in _files([str(folder)]):
        with contextlib.suppress(OSError):  # deleted meanwhile: seen next time
            st = path.stat()
            found[path] = (st.st_mtime, st.st_size)
    return found


def cmd_rag_watch(client: Client, args: argparse.Namespace) -> int:
    """Index a folder, then keep the collection in step with it until Ctrl-C: new and
    changed files are indexed, deleted ones removed (checked every --interval seconds)."""
    folder = Path(args.folder).resolve()
    if not folder.is_dir():
        raise UsageError(f"{args.folder} is not a folder")
    sync = argparse.Namespace(**vars(args), paths=[str(folder)], prune=True)
    seen = _snapshot(folder)
    cmd_rag_index(client, sync)
    output.stdout().flush()  # each round is seen as it happens, also through a pipe
    note(f"{PROG}: watching {folder} every {args.interval:g} s (Ctrl-C stops)")
    try:
        while True:
            time.sleep(args.interval)
            now = _snapshot(folder)
            changed = sorted(p for p, mark in now.items() if seen.get(p) != mark)
            gone = [p for p in seen if p not in now]
            if changed:
                update = argparse.Namespace(**vars(sync))
                update.paths, update.prune = [str(p) for p in changed], False
                cmd_rag_index(client, update)
            if gone:
                chunks = _prune(client, args.collection, folder, list(now))
                echo(f"{args.collection}: {len(gone)} deleted files removed ({chunks} chunks)")
            output.stdout().flush()
            seen = now
    except KeyboardInterrupt:
        return 0


def _where(hit: rag_pb2.SearchHit) -> str:
    where = hit.source or hit.title or hit.document_id
    details = []
    if hit.page:
        details.append(f"page {hit.page}")
    if hit.heading_path:
        details.append(" > ".join(hit.heading_path))
    return f"{where} ({'; '.join(details)})" if details else where


def _snippet(text: str, width: int = 100) -> str:
    flat = " ".join(text.split())
    return flat if len(flat) <= width else flat[: width - 3] + "..."


def _filter_args(args: argparse.Namespace) -> rag_pb2.Filter | None:
    if not args.where:
        return None
    try:
        return parse_filter(args.where)
    except ValueError as e:
        raise UsageError(str(e)) from e


def cmd_rag_search(client: Client, args: argparse.Namespace) -> int:
    response = client.search(
        args.collection, read_prompt(args.query), top_k=args.top_k, filter=_filter_args(args),
        score_threshold=args.threshold, mode=args.mode,
    )  # fmt: skip
    if args.json:
        print_json(response)
        return 0
    for i, hit in enumerate(response.hits, start=1):
        echo(f"[{i}] {hit.score:.3f}  {_where(hit)}")
        echo(f"    {_snippet(hit.text)}")
    if not response.hits:
        note(f"{PROG}: no matching passage")
    return 0


def cmd_rag_ask(client: Client, args: argparse.Namespace) -> int:
    options = options_from_args(args)
    options.pop("priority", None)
    stream = client.ask(
        args.collection, read_prompt(args.question), args.model, passages=args.top_k,
        filter=_filter_args(args), mode=args.mode, **options,
    )  # fmt: skip
    out = output.stdout()
    citations: rag_pb2.Citations | None = None
    done: common_pb2.GenerationDone | None = None
    with stream:
        for event in stream:
            kind = event.WhichOneof("event")
            if args.json:
                print_json(event, compact=True)
            elif kind == "chunk":
                out.write(event.chunk.text)
                out.flush()
            elif kind == "queued":
                note_queued(event.queued)
            if kind == "citations":
                citations = event.citations
            elif kind == "done":
                done = event.done
    if args.json:
        return 0
    out.write("\n")
    if citations is not None:
        if citations.hits:
            echo("\nSources:")
            for i, hit in enumerate(citations.hits, start=1):
                echo(f"  [{i}] {_where(hit)}  (score {hit.score:.3f})")
        else:
            echo("\nSources: none matched the question")
        if citations.dropped:
            note(f"{PROG}: {citations.dropped} more passages did not fit the model's context")
    if args.stats and done is not None:
        print_stats(done)
    return 0


def cmd_rag_embed(client: Client, args: argparse.Namespace) -> int:
    response = client.embed([read_prompt(t) for t in args.texts], args.model)
    if args.json:
        print_json(response)
        return 0
    note(f"{response.model_id}: {response.dimension} dimensions, max {response.max_tokens} tokens")
    for text, embedding in zip(args.texts, response.embeddings, strict=False):
        head = ", ".join(f"{v:.4f}" for v in embedding.values[:6])
        echo(f"{_snippet(text, 40)}: [{head}, ...]")
    for index in response.truncated:
        note(f"{PROG}: text {index + 1} was truncated to {response.max_tokens} tokens")
    return 0


def cmd_rag_delete(client: Client, args: argparse.Namespace) -> int:
    if not args.document and not args.where:
        raise UsageError("give --document ID and/or --where EXPR")
    response = client.delete_documents(args.collection, args.document, filter=_filter_args(args))
    if args.json:
        print_json(response)
    else:
        echo(f"deleted {response.deleted} chunks")
    return 0


def add_commands(commands: Subparsers) -> None:
    rag = commands.add_parser(
        "rag", help="collections, indexing, search and grounded answers over your documents"
    )
    rag_cmds = rag.add_subparsers(dest="rag_command", metavar="COMMAND", required=True)

    def collection_option(p: argparse.ArgumentParser) -> None:
        p.add_argument(
            "--collection", "-c", default=DEFAULT_COLLECTION, metavar="NAME",
            help=f"collection (default: {DEFAULT_COLLECTION})",
        )  # fmt: skip

    def where_option(p: argparse.ArgumentParser) -> None:
        p.add_argument(
            "--where", "-w", action="append", default=[], metavar="EXPR",
            help="filter (repeatable, all must hold): KEY=VALUE, KEY=A|B, KEY!=VALUE, "
            "KEY>=N, KEY<N...; keys: source, page, document_id, title, heading, metadata.KEY",
        )  # fmt: skip

    def mode_option(p: argparse.ArgumentParser) -> None:
        p.add_argument(
            "--mode", choices=SEARCH_MODES, default="",
            help="dense (meaning), keyword (shared words, BM25) or hybrid (both); default: "
            "hybrid when the collection has keyword vectors, else dense",
        )  # fmt: skip

    command(rag_cmds, "collections", cmd_rag_collections, "list the collections")
    p = command(rag_cmds, "create", cmd_rag_create, "create an empty collection")
    p.add_argument("name", metavar="NAME")
    p.add_argument("--model", "-m", default="", metavar="ID", help="embedding model")
    p.add_argument("--distance", choices=["cosine", "dot", "euclid"])
    p.add_argument("--store", default="", help="vector store (default: the daemon's)")
    p = command(rag_cmds, "drop", cmd_rag_delete_collection, "delete a collection and its data")
    p.add_argument("name", metavar="NAME")
    p = command(
        rag_cmds, "index", cmd_rag_index,
        "index files and folders (text, Markdown, HTML, PDF, DOCX) with a progress bar",
    )  # fmt: skip
    p.add_argument("paths", nargs="+", metavar="PATH")
    collection_option(p)
    p.add_argument(
        "--model", "-m", default="", metavar="ID",
        help="embedding model of the collection if it has to be created",
    )  # fmt: skip
    p.add_argument("--no-create", action="store_true", help="fail if the collection is missing")
    p.add_argument(
        "--by-path", action="store_true",
        help="let the daemon read the files (they must be under its [rag] allowed_folders) "
        "instead of uploading them",
    )  # fmt: skip
    p.add_argument("--chunk-size", type=count, default=0, metavar="TOKENS")
    p.add_argument("--chunk-overlap", type=count, default=None, metavar="TOKENS")
    p.add_argument(
        "--meta", action="append", default=[], metavar="KEY=VALUE",
        help="metadata stored with every chunk (repeatable)",
    )  # fmt: skip
    p.add_argument(
        "--prune", action="store_true",
        help="also remove from the collection the files of the given folders that were "
        "deleted or renamed since they were indexed",
    )  # fmt: skip
    p = command(
        rag_cmds, "watch", cmd_rag_watch,
        "index a folder and keep the collection in step with it (new, changed and deleted "
        "files) until Ctrl-C",
    )  # fmt: skip
    p.add_argument("folder", metavar="FOLDER")
    collection_option(p)
    p.add_argument("--model", "-m", default="", metavar="ID", help="embedding model if created")
    p.add_argument(
        "--interval", type=positive_float, default=5.0, metavar="SECONDS",
        help="how often to look for changes (default 5)",
    )  # fmt: skip
    p.set_defaults(no_create=False, by_path=False, chunk_size=0, chunk_overlap=None, meta=[])
    p = command(rag_cmds, "search", cmd_rag_search, "find the passages closest to a query")
    p.add_argument("query", metavar="QUERY", help="the query; - reads it from stdin")
    collection_option(p)
    where_option(p)
    p.add_argument("--top-k", "-k", type=count, default=0, metavar="N", help="hits (default 5)")
    p.add_argument("--threshold", type=float, default=None, metavar="SCORE")
    mode_option(p)
    p = command(rag_cmds, "ask", cmd_rag_ask, "answer a question from a collection, citing sources")
    p.add_argument("question", metavar="QUESTION", help="the question; - reads it from stdin")
    collection_option(p)
    where_option(p)
    p.add_argument(
        "--passages", dest="top_k", type=count, default=0, metavar="N",
        help="passages to retrieve (default 5; those that fit the context are used)",
    )  # fmt: skip
    mode_option(p)
    generation_options(p)
    p = command(rag_cmds, "embed", cmd_rag_embed, "embed texts (prints the first values)")
    p.add_argument("texts", nargs="+", metavar="TEXT")
    p.add_argument("--model", "-m", default="", metavar="ID", help="embedding model")
    p = command(rag_cmds, "delete", cmd_rag_delete, "delete documents from a collection")
    collection_option(p)
    where_option(p)
    p.add_argument(
        "--document", "-d", action="append", default=[], metavar="ID",
        help="document id (repeatable)",
    )  # fmt: skip
