"""Reranking: a cross-encoder named by `[rag] reranker` reorders Search's best candidates.

The cross-encoder here is a tiny real ONNX graph read by real ONNX Runtime and a real
tokenizer: a pair's logit is the sum of a weight per token of its second segment, the
passage (token type 1). Only "rollback" (5) and "signature" (2) weigh anything, so the
expected order is known, and a reranker that fed the pair the wrong way round (the
query as the passage) would give every passage the same score.
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import grpc
import numpy as np
import pytest

from rustaid.api.v1 import rag_pb2
from rustaid.api.v1.common_pb2 import GenerationParams
from rustaid.builtin.onnx_reranker import OnnxRerankerProvider
from rustaid.errors import PreconditionFailed
from rustaid.providers import EmbeddingOptions
from rustaid.rag.config import parse_rag_config
from rustaid.testing.daemon import run_daemon
from tests.conftest import add_model
from tests.rag.conftest import RagStubs, link_embedding_model, write_config
from tests.rag.models import write_tokenizer

CODE = grpc.StatusCode
WEIGHTS = {"rollback": 5.0, "signature": 2.0}
QUERY = "battery power update rollback"
DOCS = {
    # Shares most words with the query: first for dense, keyword and hybrid search.
    "strong": "battery power update battery power update",
    "rollback": "rollback",
    "signature": "signature update",
    "other": "thermal folder",
}


def write_cross_encoder(folder: Path, *, outputs: int = 1) -> Path:
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    folder.mkdir(parents=True)
    vocab = write_tokenizer(folder / "tokenizer.json")
    weights = np.zeros(len(vocab), dtype=np.float32)
    for word, weight in WEIGHTS.items():
        weights[vocab[word]] = weight
    ints = TensorProto.INT64
    inputs = [
        helper.make_tensor_value_info(name, ints, ["batch", "seq"])
        for name in ("input_ids", "attention_mask", "token_type_ids")
    ]
    nodes = [
        helper.make_node("Gather", ["weights", "input_ids"], ["token_weights"], axis=0),
        helper.make_node("Cast", ["token_type_ids"], ["second"], to=TensorProto.FLOAT),
        helper.make_node("Cast", ["attention_mask"], ["real"], to=TensorProto.FLOAT),
        helper.make_node("Mul", ["token_weights", "second"], ["passage_weights"]),
        helper.make_node("Mul", ["passage_weights", "real"], ["counted"]),
        helper.make_node("ReduceSum", ["counted", "seq_axis"], ["score"], keepdims=1),
    ]
    if outputs == 2:  # [not relevant, relevant]
        nodes.append(helper.make_node("Neg", ["score"], ["not_score"]))
        nodes.append(helper.make_node("Concat", ["not_score", "score"], ["logits"], axis=1))
    else:
        nodes.append(helper.make_node("Identity", ["score"], ["logits"]))
    graph = helper.make_graph(
        nodes,
        "tiny-cross-encoder",
        inputs,
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", outputs])],
        [
            numpy_helper.from_array(weights, "weights"),
            numpy_helper.from_array(np.array([1], dtype=np.int64), "seq_axis"),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, str(folder / "model.onnx"))
    return folder


@pytest.mark.parametrize("outputs", [1, 2])
def test_the_onnx_reranker_scores_each_passage_against_the_query(
    tmp_path: Path, outputs: int
) -> None:
    folder = write_cross_encoder(tmp_path / "ce", outputs=outputs)
    model = OnnxRerankerProvider().load(folder, EmbeddingOptions(threads=1))
    passages = list(DOCS.values()) * 6  # more than one run of pairs
    scores = model.score(QUERY, passages)
    factor = 2 if outputs == 2 else 1  # relevant - not relevant
    expected = [
        factor * sum(WEIGHTS.get(w, 0.0) for w in p.split()) for p in passages
    ]  # the query's "rollback" does not count: it is the first segment
    assert scores == pytest.approx(expected)
    model.close()


def test_a_folder_that_is_not_a_cross_encoder_is_refused_with_what_is_missing(
    tmp_path: Path,
) -> None:
    folder = tmp_path / "half"
    folder.mkdir()
    write_tokenizer(folder / "tokenizer.json")
    with pytest.raises(PreconditionFailed, match=r"needs model\.onnx and tokenizer\.json"):
        OnnxRerankerProvider().load(folder, EmbeddingOptions())
    (folder / "model.onnx").write_bytes(b"not a graph")
    with pytest.raises(PreconditionFailed, match="cannot be loaded by ONNX Runtime"):
        OnnxRerankerProvider().load(folder, EmbeddingOptions())


@pytest.mark.parametrize(
    ("section", "message"),
    [
        ({"reranker": "../elsewhere"}, "must be the name of a folder in models/rerankers/"),
        ({"reranker": "a/b"}, "must be the name of a folder in models/rerankers/"),
        ({"reranker": 3}, "must be a string"),
        ({"rerank_candidates": 0}, "must be an integer >= 1"),
        ({"rerank_candidates": 500}, "must be at most 200"),
    ],
)
def test_bad_reranker_settings_are_named(section: dict[str, object], message: str) -> None:
    from rustaid.errors import InvalidArgument

    with pytest.raises(InvalidArgument, match=message):
        parse_rag_config(section)


def _search(stubs: RagStubs, **kw: object) -> rag_pb2.SearchResponse:
    return stubs.rag.Search(rag_pb2.SearchRequest(collection="docs", query=QUERY, **kw))


def _order(response: rag_pb2.SearchResponse) -> list[str]:
    return [h.document_id for h in response.hits]


def _reload(stubs: RagStubs, pid: int, config: str, data_dir: Path, want_rerank: bool) -> None:
    write_config(data_dir, config)
    os.kill(pid, signal.SIGHUP)
    deadline = time.monotonic() + 20
    while (_search(stubs, top_k=2).rerank_ms > 0) != want_rerank:
        assert time.monotonic() < deadline, "the [rag] reranker setting was not applied"
        time.sleep(0.2)


def test_search_and_ask_candidates_are_reordered_by_the_reranker(
    tmp_path: Path, tiny_models: dict[str, Path], model_files: dict[str, Path]
) -> None:
    link_embedding_model(tmp_path, tiny_models["tiny"], "tiny")
    add_model(tmp_path, model_files["tiny"], "chat.gguf")
    write_cross_encoder(tmp_path / "models" / "rerankers" / "tiny-ce")
    plain = '[rag]\nembedding_model = "embeddings/tiny"\n'
    write_config(tmp_path, plain)
    with run_daemon(tmp_path) as d:
        stubs = RagStubs(d)
        stubs.rag.CreateCollection(rag_pb2.CreateCollectionRequest(name="docs"))
        stubs.rag.IndexDocuments(
            iter(
                [
                    rag_pb2.IndexDocumentsRequest(
                        collection="docs",
                        documents=[rag_pb2.Document(id=k, text=v) for k, v in DOCS.items()],
                    )
                ]
            )
        )
        for mode in (rag_pb2.SEARCH_MODE_HYBRID, rag_pb2.SEARCH_MODE_DENSE):
            before = _search(stubs, top_k=4, mode=mode)
            assert before.rerank_ms == 0
            assert _order(before)[0] == "strong", _order(before)

        # Turned on by a reload: the store's best 3 are reordered, 2 kept.
        _reload(stubs, d.proc.pid, plain + 'reranker = "tiny-ce"\nrerank_candidates = 3\n',
                tmp_path, want_rerank=True)  # fmt: skip
        after = _search(stubs, top_k=2)
        assert after.rerank_ms > 0
        assert _order(after) == ["rollback", "signature"]
        assert [h.score for h in after.hits] == pytest.approx([5.0, 2.0])
        top3 = _order(_search(stubs, top_k=3))
        assert top3[:2] == ["rollback", "signature"] and len(top3) == 3
        # Ask cites what the reranked search found, in its order.
        events = list(
            stubs.rag.Ask(
                rag_pb2.AskRequest(
                    collection="docs",
                    question=QUERY,
                    top_k=2,
                    params=GenerationParams(max_tokens=4, temperature=0),
                ),
                timeout=120,
            )
        )
        cited = [h.document_id for h in events[0].citations.hits]
        assert cited == ["rollback", "signature"][: len(cited)] and cited, events[0]
        # Filters still apply: only the candidates that pass them are reranked.
        kept = _search(
            stubs,
            top_k=3,
            filter=rag_pb2.Filter(
                must_not=[
                    rag_pb2.Condition(key="document_id", value=rag_pb2.MatchValue(text="rollback"))
                ]
            ),
        )
        assert "rollback" not in _order(kept) and _order(kept)[0] == "signature"

        # A reranker that is not there: a clear error, not silently unranked results.
        write_config(tmp_path, plain + 'reranker = "missing"\n')
        os.kill(d.proc.pid, signal.SIGHUP)
        deadline = time.monotonic() + 20
        while True:
            try:
                _search(stubs, top_k=2)
            except grpc.RpcError as e:
                assert e.code() == CODE.FAILED_PRECONDITION, e.details()
                assert "no folder" in e.details(), e.details()
                assert str(tmp_path / "models" / "rerankers" / "missing") in e.details()
                break
            assert time.monotonic() < deadline, "the missing reranker was not noticed"
            time.sleep(0.2)

        # And off again.
        write_config(tmp_path, plain)
        os.kill(d.proc.pid, signal.SIGHUP)
        deadline = time.monotonic() + 20
        while True:
            try:
                if _search(stubs, top_k=2).rerank_ms == 0:
                    break
            except grpc.RpcError:
                pass
            assert time.monotonic() < deadline
            time.sleep(0.2)
        assert _order(_search(stubs, top_k=4))[0] == "strong"
        stubs.channel.close()


def test_the_daemon_lists_the_onnx_reranker_plugin(rag_daemon: RagStubs) -> None:
    from rustaid.api.v1 import plugins_pb2

    listed = rag_daemon.plugins.ListPlugins(plugins_pb2.ListPluginsRequest()).plugins
    found = [p for p in listed if p.name == "onnx-reranker"]
    assert found, [p.name for p in listed]
    assert list(found[0].capabilities) == ["reranker:onnx"]
