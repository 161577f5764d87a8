"""Conversions of nlu.proto messages."""

from __future__ import annotations

from rustaid.api.v1 import nlu_pb2
from rustaid.errors import InvalidArgument
from rustaid.tools.nlu import EntitiesResult, Entity, EntityType, IntentResult, NluBackend

_BACKEND = {NluBackend.ONNX: nlu_pb2.NLU_BACKEND_ONNX, NluBackend.LLM: nlu_pb2.NLU_BACKEND_LLM}


def intent_score_to_pb(label: str, score: float) -> nlu_pb2.IntentScore:
    return nlu_pb2.IntentScore(label=label, score=score)


def classify_intent_response_to_pb(r: IntentResult) -> nlu_pb2.ClassifyIntentResponse:
    return nlu_pb2.ClassifyIntentResponse(
        intent=r.intent,
        confidence=r.confidence,
        scores=[intent_score_to_pb(label, score) for label, score in r.scores],
        model_id=r.model_id,
        backend=_BACKEND[r.backend],
    )


def entity_type_from_pb(t: nlu_pb2.EntityType, index: int) -> EntityType:
    if not t.name:
        raise InvalidArgument(
            f"entity_types[{index}].name is empty", field=f"entity_types[{index}].name"
        )
    return EntityType(t.name, t.description)


def entity_to_pb(e: Entity) -> nlu_pb2.Entity:
    return nlu_pb2.Entity(
        type=e.type, text=e.text, start=e.start, end=e.end, confidence=e.confidence
    )


def extract_entities_response_to_pb(r: EntitiesResult) -> nlu_pb2.ExtractEntitiesResponse:
    return nlu_pb2.ExtractEntitiesResponse(
        entities=[entity_to_pb(e) for e in r.entities],
        model_id=r.model_id,
        backend=_BACKEND[r.backend],
    )
