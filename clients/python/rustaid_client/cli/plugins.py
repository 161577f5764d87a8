"""`rustaictl plugins list|show|load|unload|reload|enable|disable`."""

from __future__ import annotations

import argparse

from google.protobuf.message import Message

from rustaid.api.v1 import (
    plugins_pb2,
)
from rustaid_client.cli.arguments import Command, Subparsers, command
from rustaid_client.cli.output import (
    echo,
    fields,
    friendly,
    human_size,
    print_json,
    table,
    time_text,
)
from rustaid_client.client import (
    Client,
)


def _plugin_row(plugin: plugins_pb2.Plugin) -> list[str]:
    return [
        plugin.id,
        plugin.version,
        friendly(plugins_pb2.PluginState, plugin.state),
        friendly(plugins_pb2.PluginSource, plugin.source),
        ", ".join(plugin.capabilities),
        plugin.error,
    ]


def cmd_plugins_list(client: Client, args: argparse.Namespace) -> int:
    response = client.list_plugins()
    if args.json:
        print_json(response)
        return 0
    headers = ["ID", "VERSION", "STATE", "SOURCE", "CAPABILITIES", "ERROR"]
    table(headers, [_plugin_row(p) for p in response.plugins])
    return 0


def _show_plugin(plugin: plugins_pb2.Plugin) -> None:
    req = plugin.requirements
    fields(
        [
            ("id", plugin.id),
            ("name", plugin.name),
            ("version", plugin.version),
            ("description", plugin.description),
            ("state", friendly(plugins_pb2.PluginState, plugin.state)),
            ("error", plugin.error),
            ("source", friendly(plugins_pb2.PluginSource, plugin.source)),
            ("path", plugin.path),
            ("capabilities", ", ".join(plugin.capabilities)),
            ("loaded", time_text(plugin.loaded_time)),
            ("min memory", human_size(req.min_memory_bytes) if req.min_memory_bytes else ""),
            (
                "recommended memory",
                human_size(req.recommended_memory_bytes) if req.recommended_memory_bytes else "",
            ),
            ("cores", str(req.cores or "")),
            ("gpu", "yes" if req.gpu else "no"),
            ("battery draw", f"{req.battery_draw_mw} mW" if req.battery_draw_mw else ""),
            ("thermal impact", f"{req.thermal_impact}/100"),
            ("background capable", "yes" if req.background_capable else "no"),
        ]
    )


def _plugin_command(action: str) -> Command:
    def run(client: Client, args: argparse.Namespace) -> int:
        plugin: plugins_pb2.Plugin
        response: Message
        if action == "show":
            got = client.get_plugin(args.id)
            response, plugin = got, got.plugin
        elif action == "load":
            loaded = client.load_plugin(args.id)
            response, plugin = loaded, loaded.plugin
        elif action == "unload":
            unloaded = client.unload_plugin(args.id)
            response, plugin = unloaded, unloaded.plugin
        else:
            reloaded = client.reload_plugin(args.id)
            response, plugin = reloaded, reloaded.plugin
        if args.json:
            print_json(plugin if action == "show" else response)
        elif action == "show":
            _show_plugin(plugin)
        else:
            state = friendly(plugins_pb2.PluginState, plugin.state)
            error = f": {plugin.error}" if plugin.error else ""
            echo(f"plugin {plugin.id}: {state}{error}")
        # The call worked but the plugin did not come up: a script should notice.
        failed = action in ("load", "reload") and plugin.state == plugins_pb2.PLUGIN_STATE_FAILED
        return 1 if failed else 0

    return run


def add_commands(commands: Subparsers) -> None:
    plugins = commands.add_parser("plugins", help="list, inspect, load and unload plugins")
    plugin_cmds = plugins.add_subparsers(dest="plugins_command", metavar="COMMAND", required=True)
    command(plugin_cmds, "list", cmd_plugins_list, "list the plugins")
    for action, help_ in (
        ("show", "show one plugin"),
        ("load", "load a plugin (id, or a file/folder name in the plugins folder)"),
        ("unload", "unload a plugin"),
        ("reload", "unload, re-read and load a plugin again"),
    ):
        p = command(plugin_cmds, action, _plugin_command(action), help_)
        p.add_argument("id", metavar="ID")
