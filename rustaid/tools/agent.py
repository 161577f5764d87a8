"""The agent loop (RunAgent): a model calls allowed tools until it answers.

Each turn the model sees the conversation so far in its tool format (see calling.py)
and its reply is constrained by the grammar of the allowed tools, so it can only call
one of them with arguments their schemas accept, or answer. The daemon then

- checks the call against the allow-list (a model given its own grammar through
  params.grammar could still ask for something else: it is told NOT_ALLOWED),
- validates the arguments and runs the tool with the executor's timeout and limits,
- feeds the result (or the error) back as the next message,

and stops at the final answer, when max_steps turns are used up, when a turn is cut
off by max_tokens, or when the model repeats a call that already failed twice. Every
step is streamed: the call, its result, the answer's text as it is written, and a final
AgentDone; a turn that waits for its model reports its queue position (AgentQueued) on
every change.
"""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field, replace
from enum import StrEnum

from rustaid.core.engine import Done, Engine, GenerationRequest, Queued, Timings
from rustaid.core.router import SelectionCriteria
from rustaid.errors import (
    InvalidArgument,
    NotFound,
    PreconditionFailed,
    ResourceExhausted,
)
from rustaid.providers import CompletionStats, FinishReason, GenerationParams, Role
from rustaid.tools.calling import (
    AnswerText,
    ChoiceMode,
    Message,
    ToolCall,
    ToolChoice,
    ToolSpec,
    TurnDone,
    build_request,
    run_turn,
)
from rustaid.tools.registry import ToolCallStatus, ToolOutcome, ToolRegistry

DEFAULT_STEPS = 8
MAX_STEPS = 32
# The same failing call (tool and arguments) this many times ends the run: a model that
# repeats what failed would otherwise use up every step (and each call's timeout).
REPEATED_FAILURES = 3


class StopReason(StrEnum):
    ANSWER = "answer"
    MAX_STEPS = "max_steps"
    LENGTH = "length"
    REPEATED_FAILURE = "repeated_failure"


@dataclass(frozen=True)
class AgentRequest:
    prompt: str
    tools: tuple[str, ...] = ()
    model_id: str = ""
    max_steps: int = 0
    params: GenerationParams = field(default_factory=GenerationParams)
    selection: SelectionCriteria = field(default_factory=SelectionCriteria)
    system_prompt: str = ""


@dataclass(frozen=True)
class AgentCall:
    turn: int
    call: ToolCall


@dataclass(frozen=True)
class AgentResult:
    turn: int
    call: ToolCall
    outcome: ToolOutcome


@dataclass(frozen=True)
class AgentText:
    turn: int
    text: str
    index: int


@dataclass(frozen=True)
class AgentQueued:
    """A model turn waits behind other requests for its model."""

    turn: int
    queued: Queued


@dataclass(frozen=True)
class AgentDone:
    turn: int
    answer: str
    steps: int
    stop_reason: StopReason
    # Usage and timings summed over the turns; finish reason of the last one.
    generation: Done


AgentEvent = AgentCall | AgentResult | AgentText | AgentQueued | AgentDone


def _check(request: AgentRequest) -> int:
    if not request.prompt.strip():
        raise InvalidArgument("prompt is empty: say what the agent should do", field="prompt")
    steps = request.max_steps or DEFAULT_STEPS
    if not 1 <= steps <= MAX_STEPS:
        raise InvalidArgument(
            f"max_steps must be between 1 and {MAX_STEPS} (0 means {DEFAULT_STEPS}); got "
            f"{request.max_steps}",
            field="max_steps",
        )
    if request.params.json_schema:
        raise InvalidArgument(
            "params.json_schema cannot be used with an agent: its replies follow the tools' "
            "schemas (params.grammar replaces the generated grammar, for experts)",
            field="params.json_schema",
        )
    return steps


async def _allowed_specs(registry: ToolRegistry, names: Sequence[str]) -> list[ToolSpec]:
    specs: list[ToolSpec] = []
    for i, name in enumerate(dict.fromkeys(names)):
        if not name:
            raise InvalidArgument(f"tools[{i}] is empty", field=f"tools[{i}]")
        tool = await registry.lookup(name)  # NotFound lists the known tools
        registry.check_usable(tool)
        specs.append(ToolSpec.of(tool))
    return specs


async def _execute(registry: ToolRegistry, call: ToolCall, allowed: set[str]) -> ToolOutcome:
    """Run a call the model made; refusals become outcomes the model is told about."""
    if call.name not in allowed:
        outcome = ToolOutcome(
            call.name,
            ToolCallStatus.NOT_ALLOWED,
            error=f"tool {call.name!r} is not allowed here; allowed: "
            f"{', '.join(sorted(allowed)) or 'none'}",
        )
        registry.record_refusal(outcome)
        return outcome
    try:
        return await registry.execute(call.name, call.arguments)
    except InvalidArgument as e:
        status = ToolCallStatus.INVALID_ARGUMENTS
        message = e.message
    except (NotFound, PreconditionFailed, ResourceExhausted) as e:
        status = ToolCallStatus.UNAVAILABLE
        message = e.message
    outcome = ToolOutcome(call.name, status, error=message)
    registry.record_refusal(outcome)
    return outcome


def _result_content(outcome: ToolOutcome) -> str:
    if outcome.ok:
        return outcome.output_json
    return json.dumps({"error": outcome.error, "status": outcome.status.value}, ensure_ascii=False)


class _Totals:
    def __init__(self, model_id: str) -> None:
        self.model_id = model_id
        self.t0 = time.perf_counter()
        self.prompt = self.completion = 0
        self.prompt_eval_ms = self.generation_ms = self.queue_ms = self.load_ms = 0.0
        self.first_token_ms = 0.0
        self.finish = FinishReason.STOP

    def add(self, done: Done) -> None:
        s, t = done.stats, done.timings
        if not self.first_token_ms:  # the first turn's
            self.first_token_ms = t.time_to_first_token_ms
        self.model_id = done.model_id
        self.prompt += s.prompt_tokens
        self.completion += s.completion_tokens
        self.prompt_eval_ms += s.prompt_eval_ms
        self.generation_ms += s.generation_ms
        self.queue_ms += t.queue_ms
        self.load_ms += t.load_ms
        self.finish = s.finish_reason

    def done(self) -> Done:
        gen_s = self.generation_ms / 1000
        return Done(
            model_id=self.model_id,
            stats=CompletionStats(
                finish_reason=self.finish,
                prompt_tokens=self.prompt,
                completion_tokens=self.completion,
                prompt_eval_ms=self.prompt_eval_ms,
                generation_ms=self.generation_ms,
            ),
            timings=Timings(
                queue_ms=self.queue_ms,
                load_ms=self.load_ms,
                prompt_eval_ms=self.prompt_eval_ms,
                generation_ms=self.generation_ms,
                time_to_first_token_ms=max(0.0, self.first_token_ms),
                tokens_per_second=self.completion / gen_s if gen_s > 0 else 0.0,
                total_ms=(time.perf_counter() - self.t0) * 1000,
            ),
        )


async def run_agent(
    engine: Engine, registry: ToolRegistry, request: AgentRequest
) -> AsyncIterator[AgentEvent]:
    steps = _check(request)
    specs = await _allowed_specs(registry, request.tools)
    allowed = {s.name for s in specs}
    model_id = engine.resolve(request.model_id, request.selection)
    base = GenerationRequest(model_id=model_id, params=request.params, selection=request.selection)
    custom_grammar = request.params.grammar or None
    messages: list[Message] = [Message(Role.USER, request.prompt)]
    totals = _Totals(model_id)
    index = 0
    failures: dict[tuple[str, str], int] = {}  # (tool, arguments) -> times it failed
    for turn in range(1, steps + 1):
        engine_request = build_request(
            engine,
            replace(base, params=replace(request.params, grammar="")),
            model_id,
            specs,
            ToolChoice(ChoiceMode.AUTO),
            messages=messages,
            system=request.system_prompt,
            grammar=custom_grammar,
        )
        finished: TurnDone | None = None
        async for event in run_turn(engine, engine_request):
            if isinstance(event, AnswerText):
                yield AgentText(turn, event.text, index)
                index += 1
            elif isinstance(event, Queued):
                yield AgentQueued(turn, event)
            elif isinstance(event, TurnDone):
                finished = event
        assert finished is not None
        totals.add(finished.done)
        reply = finished.reply
        if reply.answer is not None:
            yield AgentDone(turn, reply.answer, turn, StopReason.ANSWER, totals.done())
            return
        if reply.call is None:
            if finished.done.stats.finish_reason in (FinishReason.LENGTH, FinishReason.CANCELLED):
                yield AgentDone(turn, "", turn, StopReason.LENGTH, totals.done())
                return
            # Only reachable with a custom grammar: tell the model and go on.
            messages.append(Message(Role.ASSISTANT, finished.raw or "(empty)"))
            messages.append(Message(Role.USER, f"That reply was not understood: {reply.error}."))
            continue
        call = reply.call
        yield AgentCall(turn, call)
        outcome = await _execute(registry, call, allowed)
        yield AgentResult(turn, call, outcome)
        if outcome.status is not ToolCallStatus.OK:
            key = (call.name, call.arguments_json)
            failures[key] = failures.get(key, 0) + 1
            if failures[key] >= REPEATED_FAILURES:
                yield AgentDone(turn, "", turn, StopReason.REPEATED_FAILURE, totals.done())
                return
        messages.append(Message(Role.ASSISTANT, tool_calls=(call,)))
        messages.append(
            Message(Role.TOOL, _result_content(outcome), name=call.name, tool_call_id=call.id)
        )
    yield AgentDone(steps, "", steps, StopReason.MAX_STEPS, totals.done())
