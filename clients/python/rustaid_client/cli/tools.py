"""`rustaictl tools list|show|run` and `rustaictl agent` (a model calling tools)."""

from __future__ import annotations

import argparse
import json
import sys
import textwrap

from rustaid.api.v1 import (
    tools_pb2,
)
from rustaid_client.cli import output
from rustaid_client.cli.arguments import Subparsers, command, count, positive_float
from rustaid_client.cli.generate import note_queued, read_prompt, stats_line
from rustaid_client.cli.output import (
    EXIT_ERROR,
    PROG,
    UsageError,
    echo,
    fields,
    friendly,
    note,
    print_json,
    table,
)
from rustaid_client.client import (
    Client,
    GenerationOptions,
)


def cmd_tools_list(client: Client, args: argparse.Namespace) -> int:
    response = client.list_tools()
    if args.json:
        print_json(response)
        return 0
    rows = [
        [
            t.name,
            t.plugin,
            "yes" if t.enabled else "no",
            str(t.metrics.calls),
            str(t.metrics.failures),
            t.description if len(t.description) <= 60 else t.description[:59] + "…",
        ]
        for t in response.tools
    ]
    table(["NAME", "PLUGIN", "ENABLED", "CALLS", "FAILED", "DESCRIPTION"], rows)
    for module in response.wasm_modules:
        if module.error:
            note(f"{PROG}: WebAssembly plugin {module.path} refused: {module.error}")
    return 0


def _arguments(text: str) -> str:
    text = sys.stdin.read() if text == "-" else text
    try:
        value = json.loads(text)
    except json.JSONDecodeError as e:
        raise UsageError(f"the arguments are not valid JSON: {e}") from e
    if not isinstance(value, dict):
        raise UsageError('the arguments must be a JSON object, e.g. \'{"expression": "1+1"}\'')
    return text


def cmd_tools_show(client: Client, args: argparse.Namespace) -> int:
    response = client.list_tools()
    tool = next((t for t in response.tools if t.name == args.name), None)
    if tool is None:
        known = ", ".join(sorted(t.name for t in response.tools)) or "none"
        raise UsageError(f"no tool named {args.name!r} (tools: {known})")
    if args.json:
        print_json(tool)
        return 0
    timeout = tool.timeout.seconds + tool.timeout.nanos / 1e9
    fields(
        [
            ("name", tool.name),
            ("description", tool.description),
            ("plugin", tool.plugin),
            ("enabled", "yes" if tool.enabled else f"no: {tool.disabled_reason}"),
            ("timeout", f"{timeout:g} s" if timeout else ""),
            ("calls", f"{tool.metrics.calls} ({tool.metrics.failures} failed)"),
        ]
    )
    for title, schema in (("arguments", tool.parameters_schema), ("result", tool.result_schema)):
        if schema:
            echo(f"{title}:")
            echo(textwrap.indent(json.dumps(json.loads(schema), indent=2), "  "))
    return 0


def cmd_tools_run(client: Client, args: argparse.Namespace) -> int:
    response = client.execute_tool(args.name, _arguments(args.arguments), timeout=args.tool_timeout)
    if args.json:
        print_json(response)
    elif response.status == tools_pb2.TOOL_CALL_STATUS_OK:
        echo(json.dumps(json.loads(response.output_json), ensure_ascii=False, indent=2))
    status = friendly(tools_pb2.ToolCallStatus, response.status)
    if response.status != tools_pb2.TOOL_CALL_STATUS_OK:
        if not args.json:
            note(f"{PROG}: {args.name}: {status}: {response.error}")
        return EXIT_ERROR
    return 0


def cmd_agent(client: Client, args: argparse.Namespace) -> int:
    options = GenerationOptions()
    if args.max_tokens is not None:
        options["max_tokens"] = args.max_tokens
    if args.temperature is not None:
        options["temperature"] = args.temperature
    if args.seed is not None:
        options["seed"] = args.seed
    stream = client.run_agent(
        read_prompt(args.prompt),
        args.tool,
        args.model,
        max_steps=args.max_steps,
        system_prompt=args.system or "",
        **options,
    )
    out = output.stdout()
    done: tools_pb2.AgentDone | None = None
    with stream:
        for event in stream:
            if args.json:
                print_json(event, compact=True)
            kind = event.WhichOneof("step")
            if kind == "done":
                done = event.done
            elif args.json:
                continue
            elif kind == "tool_call":
                note(f"-> {event.tool_call.name} {event.tool_call.arguments_json}")
            elif kind == "tool_result":
                result = event.tool_result
                if result.status == tools_pb2.TOOL_CALL_STATUS_OK:
                    note(f"<- {result.output_json}")
                else:
                    status = friendly(tools_pb2.ToolCallStatus, result.status)
                    note(f"<- {status}: {result.error}")
            elif kind == "chunk":
                out.write(event.chunk.text)
                out.flush()
            elif kind == "queued":
                note_queued(event.queued)
    if done is None or args.json:
        return 0
    out.write("\n")
    if done.stop_reason != tools_pb2.AGENT_STOP_REASON_ANSWER:
        reason = friendly(tools_pb2.AgentStopReason, done.stop_reason)
        note(f"{PROG}: the agent stopped without an answer ({reason}, {done.steps} steps)")
        return EXIT_ERROR
    if args.stats:
        g = done.generation
        note(stats_line(g.model_id, g.finish_reason, g.usage, g.timings)[:-1]
              + f", {done.steps} steps]")  # fmt: skip
    return 0


def add_commands(commands: Subparsers) -> None:
    tools = commands.add_parser("tools", help="list and run tools")
    tool_cmds = tools.add_subparsers(dest="tools_command", metavar="COMMAND", required=True)
    command(tool_cmds, "list", cmd_tools_list, "list the tools (and refused WebAssembly plugins)")
    p = command(tool_cmds, "show", cmd_tools_show, "a tool's description and JSON schemas")
    p.add_argument("name", metavar="NAME")
    p = command(tool_cmds, "run", cmd_tools_run, "run a tool with JSON arguments")
    p.add_argument("name", metavar="NAME")
    p.add_argument(
        "arguments", nargs="?", default="{}", metavar="JSON", help="a JSON object; - reads stdin"
    )
    p.add_argument(
        "--tool-timeout", type=positive_float, metavar="SECONDS", help="the call's timeout"
    )
    p = command(commands, "agent", cmd_agent, "let a model call tools until it answers")
    p.add_argument("prompt", metavar="PROMPT", help="the task; - reads it from stdin")
    p.add_argument(
        "--tool", action="append", default=[], metavar="NAME", help="allowed tool (repeatable)"
    )
    p.add_argument("--model", "-m", default="", metavar="ID")
    p.add_argument("--max-steps", type=count, default=0, metavar="N", help="model turns (8)")
    p.add_argument("--system", metavar="TEXT", help="instructions for the model")
    p.add_argument("--max-tokens", "-n", type=count, metavar="N", help="per turn")
    p.add_argument("--temperature", "-t", type=float, metavar="T")
    p.add_argument("--seed", type=count, metavar="S")
    p.add_argument("--stats", action="store_true", help="print usage and steps to stderr")
