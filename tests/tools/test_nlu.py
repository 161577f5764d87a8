"""ClassifyIntent and ExtractEntities: tiny ONNX models built with onnx.helper and run by
onnxruntime, with real `tokenizers` files; and the grammar-constrained language model
when there is no ONNX model."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import numpy as np
import pytest

from rustaid.api.v1 import nlu_pb2
from rustaid.testing.daemon import run_daemon
from rustaid.tools.nlu import ground
from tests.services.test_generate import error_of, field_violations
from tests.tools.conftest import ToolStubs, make_data_dir

WORDS = ["[UNK]", "hello", "hi", "weather", "rain", "sunny", "light", "lights", "lamp", "turn",
         "on", "the", "is", "it", "fly", "from", "to", "new", "york", "paris", "rome",
         "tomorrow", "today", "will"]  # fmt: skip
INTENTS = ["greet", "weather", "lights_on"]
INTENT_WORDS = {"hello": 0, "hi": 0, "weather": 1, "rain": 1, "sunny": 1, "light": 2,
                "lights": 2, "lamp": 2}  # fmt: skip
TAGS = ["O", "B-city", "I-city", "B-date"]
TAG_WORDS = {"paris": 1, "rome": 1, "new": 1, "york": 2, "tomorrow": 3, "today": 3}


def write_tokenizer(folder: Path) -> None:
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers

    tokenizer = Tokenizer(models.WordLevel({w: i for i, w in enumerate(WORDS)}, unk_token="[UNK]"))
    tokenizer.normalizer = normalizers.Lowercase()
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer.save(str(folder / "tokenizer.json"))


def write_model(folder: Path, per_token: bool) -> None:
    """Embedding lookup (one-hot), then a linear layer: mean-pooled for an intent
    classifier, per token for a tagger. The weights make the listed words vote."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    v = len(WORDS)
    labels = TAGS if per_token else INTENTS
    votes = TAG_WORDS if per_token else INTENT_WORDS
    weights = np.zeros((v, len(labels)), dtype=np.float32)
    for word, label in votes.items():
        weights[WORDS.index(word), label] = 6.0
    if per_token:
        weights[:, 0] += 3.0  # "O" unless a word votes otherwise
    inits = [
        numpy_helper.from_array(np.eye(v, dtype=np.float32), "embeddings"),
        numpy_helper.from_array(weights, "weights"),
    ]
    nodes = [
        helper.make_node("Gather", ["embeddings", "input_ids"], ["embedded"]),
        helper.make_node("Cast", ["attention_mask"], ["mask_f"], to=TensorProto.FLOAT),
        helper.make_node("Unsqueeze", ["mask_f", "axis2"], ["mask3"]),
        helper.make_node("Mul", ["embedded", "mask3"], ["masked"]),
    ]
    inits.append(numpy_helper.from_array(np.array([2], dtype=np.int64), "axis2"))
    if per_token:
        nodes.append(helper.make_node("MatMul", ["masked", "weights"], ["logits"]))
        out_shape = ["batch", "sequence", len(labels)]
    else:
        nodes.append(helper.make_node("ReduceMean", ["masked"], ["pooled"], axes=[1], keepdims=0))
        nodes.append(helper.make_node("MatMul", ["pooled", "weights"], ["logits"]))
        out_shape = ["batch", len(labels)]
    graph = helper.make_graph(
        nodes,
        "tagger" if per_token else "classifier",
        [
            helper.make_tensor_value_info("input_ids", TensorProto.INT64, ["batch", "sequence"]),
            helper.make_tensor_value_info(
                "attention_mask", TensorProto.INT64, ["batch", "sequence"]
            ),
        ],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, out_shape)],
        initializer=inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    folder.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(folder / "model.onnx"))
    write_tokenizer(folder)
    task = "entities" if per_token else "intent"
    (folder / "labels.json").write_text(json.dumps({"task": task, "labels": labels}))
    old = time.time() - 60  # settled files: the daemon lists them at once
    for path in folder.iterdir():
        os.utime(path, (old, old))


@pytest.fixture(scope="module")
def stubs(tmp_path_factory: pytest.TempPathFactory, tool_model: Path) -> Iterator[ToolStubs]:
    data = make_data_dir(tmp_path_factory.mktemp("nlu"), tool_model)
    write_model(data / "models" / "nlu" / "intents", per_token=False)
    write_model(data / "models" / "nlu" / "places", per_token=True)
    broken = data / "models" / "nlu" / "broken"
    write_model(broken, per_token=False)
    (broken / "tokenizer.json").unlink()
    with run_daemon(data) as daemon:
        s = ToolStubs(daemon)
        yield s
        s.close()


def classify(stubs: ToolStubs, text: str, **kw: object) -> nlu_pb2.ClassifyIntentResponse:
    return stubs.nlu.ClassifyIntent(nlu_pb2.ClassifyIntentRequest(text=text, **kw))  # type: ignore[arg-type]


def extract(stubs: ToolStubs, text: str, **kw: object) -> nlu_pb2.ExtractEntitiesResponse:
    return stubs.nlu.ExtractEntities(nlu_pb2.ExtractEntitiesRequest(text=text, **kw))  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("text", "intent"),
    [
        ("Hello there", "greet"),
        ("will it rain today", "weather"),
        ("turn on the lamp", "lights_on"),
    ],
)
def test_the_onnx_classifier_is_used_when_present(stubs: ToolStubs, text: str, intent: str) -> None:
    r = classify(stubs, text)
    assert (r.intent, r.model_id, r.backend) == (intent, "nlu/intents", nlu_pb2.NLU_BACKEND_ONNX)
    scores = [(s.label, s.score) for s in r.scores]
    assert sorted(label for label, _ in scores) == sorted(INTENTS)
    assert scores == sorted(scores, key=lambda s: -s[1])
    assert sum(score for _, score in scores) == pytest.approx(1.0, abs=1e-5)
    assert r.confidence == pytest.approx(scores[0][1]) and r.confidence > 0.5


def test_labels_restrict_the_classifier(stubs: ToolStubs) -> None:
    r = classify(stubs, "turn on the lamp", labels=["greet", "weather"])
    assert r.intent in ("greet", "weather")
    assert {s.label for s in r.scores} == {"greet", "weather"}
    assert sum(s.score for s in r.scores) == pytest.approx(1.0, abs=1e-5)


def test_the_onnx_tagger_finds_entities_with_offsets(stubs: ToolStubs) -> None:
    text = "Fly from New York to Paris tomorrow"
    r = extract(stubs, text)
    assert (r.model_id, r.backend) == ("nlu/places", nlu_pb2.NLU_BACKEND_ONNX)
    found = [(e.type, e.text) for e in r.entities]
    assert found == [("city", "New York"), ("city", "Paris"), ("date", "tomorrow")]
    for e in r.entities:
        assert text[e.start : e.end] == e.text and 0.5 < e.confidence <= 1
    only = extract(stubs, text, entity_types=[nlu_pb2.EntityType(name="date")])
    assert [(e.type, e.text) for e in only.entities] == [("date", "tomorrow")]


def test_a_language_model_answers_without_an_onnx_model(stubs: ToolStubs) -> None:
    labels = ["greet", "weather", "lights_on", "play_music"]
    seen = set()
    for text in ("hello", "is it sunny?", "lights please", "play some jazz", "what", "ok"):
        r = classify(stubs, text, model_id="tiny", labels=labels)
        assert r.backend == nlu_pb2.NLU_BACKEND_LLM and r.model_id == "tiny"
        assert r.intent in labels  # the grammar allows nothing else
        assert not r.scores
        seen.add(r.intent)
    assert seen


def test_language_model_entities_are_grounded(stubs: ToolStubs) -> None:
    text = "fly from Paris to Rome tomorrow"
    types = [nlu_pb2.EntityType(name="city", description="a town"), nlu_pb2.EntityType(name="date")]
    r = extract(stubs, text, model_id="tiny", entity_types=types)
    assert r.backend == nlu_pb2.NLU_BACKEND_LLM
    for e in r.entities:
        assert e.type in ("city", "date")
        assert text[e.start : e.end] == e.text  # only text that is really there


def test_grounding_keeps_only_what_is_in_the_text() -> None:
    text = "Paris, then paris again, then Straße"
    found = ground(text, [("city", "paris"), ("city", "PARIS"), ("city", "Lyon"),
                          ("street", "straße"), ("city", " ")])  # fmt: skip
    assert [(e.type, e.text, e.start) for e in found] == [
        ("city", "Paris", 0), ("city", "paris", 12), ("street", "Straße", 30)
    ]  # fmt: skip


@pytest.mark.parametrize(
    ("call", "code", "field", "message"),
    [
        (lambda s: classify(s, ""), grpc.StatusCode.INVALID_ARGUMENT, "text", "text is empty"),
        (lambda s: classify(s, "hi", model_id="tiny"), grpc.StatusCode.INVALID_ARGUMENT,
         "labels", "labels is empty"),
        (lambda s: classify(s, "hi", labels=["greet", "greet"]),
         grpc.StatusCode.INVALID_ARGUMENT, "labels[1]", "is given twice"),
        (lambda s: classify(s, "hi", labels=["dance"]), grpc.StatusCode.INVALID_ARGUMENT,
         "labels", "labels ['dance'] are not labels of 'nlu/intents'"),
        (lambda s: classify(s, "hi", model_id="nlu/places"), grpc.StatusCode.INVALID_ARGUMENT,
         "model_id", "is an entities model, not an intent model"),
        (lambda s: classify(s, "hi", model_id="nlu/broken"), grpc.StatusCode.FAILED_PRECONDITION,
         "", "has no tokenizer.json"),
        (lambda s: classify(s, "hi", model_id="ghost"), grpc.StatusCode.NOT_FOUND, "", "ghost"),
        (lambda s: extract(s, "hi", model_id="tiny"), grpc.StatusCode.INVALID_ARGUMENT,
         "entity_types", "entity_types is empty"),
        (lambda s: extract(s, "hi", entity_types=[nlu_pb2.EntityType(name="")]),
         grpc.StatusCode.INVALID_ARGUMENT, "entity_types[0].name", "is empty"),
        (lambda s: extract(s, "hi", entity_types=[nlu_pb2.EntityType(name="person")]),
         grpc.StatusCode.INVALID_ARGUMENT, "entity_types", "are not types of 'nlu/places'"),
        (lambda s: extract(s, "x" * 10001), grpc.StatusCode.INVALID_ARGUMENT, "text",
         "at most 10000"),
    ],
)  # fmt: skip
def test_bad_nlu_requests(
    stubs: ToolStubs, call: object, code: grpc.StatusCode, field: str, message: str
) -> None:
    err = error_of(lambda: call(stubs))  # type: ignore[operator]
    assert err.code() == code
    assert message in err.details()
    if field:
        assert field_violations(err) == [field]
