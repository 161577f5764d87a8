"""ToolsService (ListTools, ExecuteTool, RunAgent) and NluService (ClassifyIntent,
ExtractEntities). The logic lives in rustaid.tools."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any

from rustaid.api.v1 import nlu_pb2, nlu_pb2_grpc, tools_pb2, tools_pb2_grpc
from rustaid.errors import InvalidArgument
from rustaid.services import convert
from rustaid.services.convert import nlu as convert_nlu
from rustaid.services.convert import tools as convert_tools
from rustaid.services.paging import paginate
from rustaid.tools.agent import (
    AgentCall,
    AgentDone,
    AgentQueued,
    AgentResult,
    AgentText,
    run_agent,
)

if TYPE_CHECKING:
    from rustaid.core.engine import Engine
    from rustaid.tools.nlu import Nlu
    from rustaid.tools.registry import ToolRegistry

Context = Any  # grpc.aio.ServicerContext


class ToolsServicer(tools_pb2_grpc.ToolsServiceServicer):
    def __init__(self, tools: ToolRegistry, engine: Engine) -> None:
        self.tools = tools
        self.engine = engine

    async def ListTools(
        self, request: tools_pb2.ListToolsRequest, context: Context
    ) -> tools_pb2.ListToolsResponse:
        registry = self.tools
        await registry.rescan()
        page = paginate(registry.list(), lambda t: t.name, request.page_size, request.page_token)
        modules = [] if request.page_token else registry.wasm_modules()
        return tools_pb2.ListToolsResponse(
            tools=[convert_tools.tool_to_pb(t) for t in page.items],
            wasm_modules=[convert_tools.wasm_module_to_pb(m) for m in modules],
            next_page_token=page.next_page_token,
        )

    async def ExecuteTool(
        self, request: tools_pb2.ExecuteToolRequest, context: Context
    ) -> tools_pb2.ExecuteToolResponse:
        if not request.name:
            raise InvalidArgument("name is empty: give the tool to run", field="name")
        timeout = convert_tools.seconds_from_pb(request.timeout, "timeout")
        outcome = await self.tools.execute(request.name, request.arguments_json, timeout_s=timeout)
        return convert_tools.execute_tool_response_to_pb(outcome)

    async def RunAgent(
        self, request: tools_pb2.RunAgentRequest, context: Context
    ) -> AsyncIterator[tools_pb2.RunAgentResponse]:
        agent = convert_tools.run_agent_request_from_pb(request)
        async for event in run_agent(self.engine, self.tools, agent):
            if isinstance(event, AgentText):
                yield tools_pb2.RunAgentResponse(
                    chunk=convert_tools.token_chunk(event.text, event.index), turn=event.turn
                )
            elif isinstance(event, AgentCall):
                yield tools_pb2.RunAgentResponse(
                    tool_call=convert_tools.tool_call_to_pb(event.call), turn=event.turn
                )
            elif isinstance(event, AgentResult):
                yield tools_pb2.RunAgentResponse(
                    tool_result=convert_tools.tool_result_to_pb(event.call, event.outcome),
                    turn=event.turn,
                )
            elif isinstance(event, AgentQueued):
                yield tools_pb2.RunAgentResponse(
                    queued=convert.queue_status_to_pb(event.queued), turn=event.turn
                )
            elif isinstance(event, AgentDone):
                yield tools_pb2.RunAgentResponse(
                    done=convert_tools.agent_done_to_pb(event), turn=event.turn
                )


class NluServicer(nlu_pb2_grpc.NluServiceServicer):
    def __init__(self, nlu: Nlu) -> None:
        self.nlu = nlu

    async def ClassifyIntent(
        self, request: nlu_pb2.ClassifyIntentRequest, context: Context
    ) -> nlu_pb2.ClassifyIntentResponse:
        result = await self.nlu.classify(
            request.text,
            model_id=request.model_id,
            labels=list(request.labels),
            selection=convert.selection_criteria_from_pb(request.selection),
        )
        return convert_nlu.classify_intent_response_to_pb(result)

    async def ExtractEntities(
        self, request: nlu_pb2.ExtractEntitiesRequest, context: Context
    ) -> nlu_pb2.ExtractEntitiesResponse:
        types = [convert_nlu.entity_type_from_pb(t, i) for i, t in enumerate(request.entity_types)]
        result = await self.nlu.extract(
            request.text,
            model_id=request.model_id,
            types=types,
            selection=convert.selection_criteria_from_pb(request.selection),
        )
        return convert_nlu.extract_entities_response_to_pb(result)
