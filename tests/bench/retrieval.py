"""Retrieval quality: dense, keyword and hybrid search through the daemon, against exact
brute-force cosine with the same model and the same chunks, fp32 and int8.

    .venv/bin/python tests/bench/retrieval.py [--quick] [--plain] [--threads 2] [--json out.json]

Corpus: 55 Debian manual pages as Markdown (tests/bench/retrieval/corpus/, rebuilt from
the installed pages with build_corpus.py); questions: tests/bench/retrieval/questions.json,
paraphrased, each with its page and a phrase of the passage that answers it. A hit is
right when it comes from that page and its text or heading path holds the phrase.

1. A daemon with the real all-MiniLM-L6-v2 indexes the corpus (IndexFile, Markdown
   parser, default chunking) into one Qdrant Edge collection per model, all with keyword
   vectors. Models: fp32; int8, the published model_int8.onnx (weights quantised per
   tensor); q8, the int8 model `rustaid quantize` makes of the fp32 one (per channel).
2. Every question is searched (top_k 10) in each mode: dense, keyword, hybrid.
3. Exact brute force: the same parser and chunker run in this process with the fp32
   model, the chunk texts are embedded directly and ranked by exact cosine. Its top
   results are compared with the daemon's dense ones (the store adds no loss).

Reports recall@1, @5, @10 and MRR@10 per model and mode, the page-level recall@5, and
hybrid - dense, int8 - fp32 and q8 - fp32 at recall@5. --quick uses the first 12 pages' questions.
--plain indexes the pages as plain text laid out as `man` prints them (section titles in
capitals at the margin, text indented), through the plain-text parser: what its heading
detection recovers of the Markdown structure.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from tests.bench import common

HERE = Path(__file__).resolve().parent / "retrieval"
CORPUS = HERE / "corpus"
QUESTIONS = HERE / "questions.json"
MINILM = Path(
    os.environ.get(
        "RUSTAID_MINILM", common.REPO_ROOT.parent / "shared" / "models" / "all-minilm-l6-v2"
    )
)
MODES = ("dense", "keyword", "hybrid")
TOP_K = 10


def _norm(text: str) -> str:
    return re.sub(r"\s+", " ", text).lower()


def right(page: str, answer: str, document_id: str, text: str, heading: str) -> bool:
    return Path(document_id).stem == page and _norm(answer) in _norm(text + " " + heading)


def as_man_text(markdown: str) -> str:
    """A corpus page as `man` prints it: the title line, section titles in capitals at the
    margin, their text indented by 7 spaces (the inverse of build_corpus.to_markdown)."""
    out: list[str] = []
    for line in markdown.splitlines():
        if line.startswith("# "):
            out.append(line[2:])
        elif line.startswith("## "):
            out.append(line[3:].upper())
        else:
            out.append("       " + line if line.strip() else "")
    return "\n".join(out) + "\n"


def corpus_files(plain: bool, into: Path) -> list[Path]:
    """The corpus pages, as Markdown or (plain) written to `into` as man-style text."""
    files = sorted(CORPUS.glob("*.md"))
    if not plain:
        return files
    into.mkdir()
    for path in files:
        (into / f"{path.stem}.txt").write_text(as_man_text(path.read_text()))
    return sorted(into.glob("*.txt"))


def metrics(ranks: list[int | None]) -> dict[str, float]:
    """recall@k and MRR@10 from the 1-based rank of the first right hit (None: missed)."""
    n = len(ranks)
    return {
        "recall@1": sum(r is not None and r <= 1 for r in ranks) / n,
        "recall@5": sum(r is not None and r <= 5 for r in ranks) / n,
        "recall@10": sum(r is not None and r <= 10 for r in ranks) / n,
        "mrr@10": sum(1 / r for r in ranks if r is not None and r <= 10) / n,
    }


def first_right(q: dict[str, str], hits: list[tuple[str, str, str]]) -> int | None:
    for rank, (doc, text, heading) in enumerate(hits, 1):
        if right(q["page"], q["answer"], doc, text, heading):
            return rank
    return None


def model_folders(root: Path) -> None:
    emb = root / "models" / "embeddings"
    emb.mkdir(parents=True)
    (emb / "minilm").symlink_to(MINILM, target_is_directory=True)
    int8 = emb / "minilm-int8"
    int8.mkdir()
    (int8 / "model.onnx").symlink_to(MINILM / "model_int8.onnx")
    (int8 / "tokenizer.json").symlink_to(MINILM / "tokenizer.json")
    (int8 / "1_Pooling").symlink_to(MINILM / "1_Pooling", target_is_directory=True)
    from rustaid.builtin.onnx_quantization import quantize_folder

    q8 = quantize_folder(MINILM, emb / "minilm-q8")
    old = time.time() - 3600  # settled files: listed at once
    for folder in (int8, q8, *q8.iterdir()):
        os.utime(folder, (old, old), follow_symlinks=False)


def brute_force(
    files: list[Path], questions: list[dict[str, str]], threads: int
) -> tuple[list[list[tuple[str, str, str]]], int]:
    """Top TOP_K chunks per question by exact cosine over every chunk (fp32, in process)."""
    import numpy as np

    from rustaid.builtin.onnx_embeddings import OnnxEmbeddingProvider
    from rustaid.builtin.parsers import MarkdownParser, TextParser
    from rustaid.providers import EmbeddingOptions
    from rustaid.rag.chunking import Chunker
    from rustaid.rag.config import RagConfig

    model = OnnxEmbeddingProvider().load(MINILM, EmbeddingOptions(threads=threads))
    config = RagConfig()
    size = min(config.chunk_size, model.max_tokens - model.special_tokens)
    overlap = min(config.chunk_overlap, (size - 1) // 2)
    chunker = Chunker(model.token_offsets, size, overlap)
    chunks: list[tuple[str, str, str]] = []
    embed_texts: list[str] = []
    for path in files:
        parser = MarkdownParser() if path.suffix == ".md" else TextParser()
        parsed = parser.parse(path.read_bytes(), path.name)
        for c in chunker.chunk(parsed):
            chunks.append((path.name, c.text, " ".join(c.heading_path)))
            embed_texts.append(c.embed_text)
    vectors = np.array(model.embed(embed_texts), dtype=np.float32)
    queries = np.array(model.embed([q["q"] for q in questions]), dtype=np.float32)
    scores = queries @ vectors.T
    top = np.argsort(-scores, axis=1)[:, :TOP_K]
    model.close()
    return [[chunks[i] for i in row] for row in top], len(chunks)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--json", metavar="FILE")
    ap.add_argument("--plain", action="store_true", help="index the pages as man-style text")
    args = common.parse_args(ap, argv, quick={})
    if not (MINILM / "model.onnx").is_file():
        print(f"the real all-MiniLM-L6-v2 is not at {MINILM} (set RUSTAID_MINILM)", file=sys.stderr)
        return 2

    from rustaid.api.v1 import rag_pb2, rag_pb2_grpc
    from rustaid.testing.daemon import run_daemon

    questions: list[dict[str, str]] = json.loads(QUESTIONS.read_text())
    root = Path(tempfile.mkdtemp(prefix="rustaid-bench-retrieval-"))
    files = corpus_files(args.plain, root / "plain")
    if args.quick:
        files = files[:12]
        names = {p.stem for p in files}
        questions = [q for q in questions if q["page"] in names]
    model_folders(root)
    (root / "config").mkdir()
    (root / "config" / "rustaid.toml").write_text(
        f'[rag]\nembedding_model = "embeddings/minilm"\nembedding_threads = {args.threads}\n'
    )
    env = common.child_env(RUSTAID_THREADS=str(args.threads))
    ranks: dict[str, dict[str, list[int | None]]] = {}
    page_hits: dict[str, dict[str, int]] = {}
    dense_top: list[list[tuple[str, str, str]]] = []
    result: dict[str, Any] = {
        "questions": len(questions),
        "pages": len(files),
        "format": "plain text" if args.plain else "Markdown",
    }
    try:
        with run_daemon(root, env=env) as d:
            import grpc

            channel = grpc.insecure_channel(d.address)
            stub = rag_pb2_grpc.RagServiceStub(channel)
            modes = {
                "dense": rag_pb2.SEARCH_MODE_DENSE,
                "keyword": rag_pb2.SEARCH_MODE_KEYWORD,
                "hybrid": rag_pb2.SEARCH_MODE_HYBRID,
            }
            for model in ("fp32", "int8", "q8"):
                name = f"man-{model}"
                model_id = "embeddings/minilm" + ("" if model == "fp32" else f"-{model}")
                stub.CreateCollection(
                    rag_pb2.CreateCollectionRequest(name=name, embedding_model_id=model_id)
                )
                chunks = 0
                t0 = time.perf_counter()
                for path in files:
                    r = stub.IndexFile(
                        rag_pb2.IndexFileRequest(
                            collection=name, content=path.read_bytes(), filename=path.name
                        ),
                        timeout=300,
                    )
                    chunks += r.chunks_indexed
                result[f"chunks_{model}"] = chunks
                result[f"index_s_{model}"] = time.perf_counter() - t0
                for mode, value in modes.items():
                    key = f"{model}/{mode}"
                    ranks[key], page_hits[key] = [], {"hits": 0}
                    for q in questions:
                        hits = stub.Search(
                            rag_pb2.SearchRequest(
                                collection=name, query=q["q"], top_k=TOP_K, mode=value
                            )
                        ).hits
                        found = [(h.document_id, h.text, " ".join(h.heading_path)) for h in hits]
                        if key == "fp32/dense":
                            dense_top.append(found)
                        ranks[key].append(first_right(q, found))
                        pages = {Path(h.document_id).stem for h in hits[:5]}
                        page_hits[key]["hits"] += q["page"] in pages
            channel.close()
        exact, exact_chunks = brute_force(files, questions, args.threads)
        ranks["fp32/exact"] = [first_right(q, top) for q, top in zip(questions, exact, strict=True)]
        page_hits["fp32/exact"] = {
            "hits": sum(
                q["page"] in {Path(doc).stem for doc, _, _ in top[:5]}
                for q, top in zip(questions, exact, strict=True)
            )
        }
        same5 = sum(
            [t[1] for t in a[:5]] == [t[1] for t in b[:5]]
            for a, b in zip(exact, dense_top, strict=True)
        )
        result["exact_chunks"] = exact_chunks
        result["dense_top5_equal_to_exact"] = same5 / len(questions)
    finally:
        shutil.rmtree(root, ignore_errors=True)

    rows = []
    table: dict[str, dict[str, float]] = {}
    for key, r in ranks.items():
        m = metrics(r)
        m["page_recall@5"] = page_hits[key]["hits"] / len(questions)
        table[key] = m
        rows.append([key, *(round(v, 3) for v in m.values())])
    result["metrics"] = table
    gain = table["fp32/hybrid"]["recall@5"] - table["fp32/dense"]["recall@5"]
    int8_gap = table["int8/dense"]["recall@5"] - table["fp32/dense"]["recall@5"]
    result["hybrid_minus_dense_recall@5"] = gain
    result["int8_minus_fp32_dense_recall@5"] = int8_gap
    q8_gap = table["q8/dense"]["recall@5"] - table["fp32/dense"]["recall@5"]
    result["q8_minus_fp32_dense_recall@5"] = q8_gap
    print(
        f"\n{len(questions)} questions, {len(files)} pages ({result['format']}), "
        f"{result['chunks_fp32']} chunks "
        f"(brute force: {result['exact_chunks']})"
    )
    headers = ["model/mode", "recall@1", "recall@5", "recall@10", "MRR@10", "page recall@5"]
    print(common.table(headers, rows))
    print(
        f"\nhybrid - dense recall@5 (fp32): {gain:+.3f}; int8 - fp32 dense recall@5: "
        f"{int8_gap:+.3f}; q8 (rustaid quantize) - fp32: {q8_gap:+.3f}; "
        "daemon dense top 5 identical to exact brute force for "
        f"{result['dense_top5_equal_to_exact']:.0%} of questions"
    )
    common.write_json(args.json, result)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
