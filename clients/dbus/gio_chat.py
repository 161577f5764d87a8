#!/usr/bin/python3
"""Stream a chat reply from rustaid over D-Bus with GLib's GIO, as a desktop app does.

    python3 clients/dbus/gio_chat.py "Why is the sky blue?"
    python3 clients/dbus/gio_chat.py --system "Why is the sky blue?"   # the system service

Uses only the distribution's PyGObject (Debian: python3-gi), no rustaid package. The
reply arrives as Token signals sent to this connection only; Ctrl-C cancels it. The
generation's statistics go to standard error.
"""

from __future__ import annotations

import signal
import sys

from gi.repository import Gio, GLib

BUS_NAME = "org.rustai.Daemon1"
OBJECT_PATH = "/org/rustai/Daemon1"
INTERFACE = "org.rustai.Daemon1"


def main(argv: list[str]) -> int:
    system = "--system" in argv
    question = " ".join(a for a in argv if a != "--system") or "Why is the sky blue?"
    bus = Gio.bus_get_sync(Gio.BusType.SYSTEM if system else Gio.BusType.SESSION)
    loop = GLib.MainLoop()
    outcome = {"status": 0}

    def on_signal(_conn, _sender, _path, _iface, member, params, gen_id):  # noqa: ANN001
        args = params.unpack()
        if args[0] != gen_id:
            return
        if member == "Token":
            print(args[1], end="", flush=True)
        elif member == "Finished":
            stats = args[1]
            print(
                f"\n[{stats['model_id']}: {stats['completion_tokens']} tokens, "
                f"{stats['tokens_per_second']:.1f} tokens/s]",
                file=sys.stderr,
            )
            loop.quit()
        elif member == "Failed":
            print(f"\nerror: {args[1]}: {args[2]}", file=sys.stderr)
            outcome["status"] = 1
            loop.quit()

    messages = GLib.Variant("(a(ss)a{sv})", ([("user", question)], {}))
    try:
        reply = bus.call_sync(
            BUS_NAME, OBJECT_PATH, INTERFACE, "StartChat", messages,
            GLib.VariantType("(s)"), Gio.DBusCallFlags.NONE, -1, None,
        )
    except GLib.Error as e:
        print(f"error: {Gio.DBusError.get_remote_error(e)}: {e.message}", file=sys.stderr)
        return 1
    (gen_id,) = reply.unpack()
    # Token, Finished and Failed are unicast: no match rule is needed, the subscription
    # only routes them to on_signal (they were queued while call_sync waited).
    bus.signal_subscribe(
        BUS_NAME, INTERFACE, None, OBJECT_PATH, None, Gio.DBusSignalFlags.NONE,
        on_signal, gen_id,
    )

    def cancel() -> bool:
        bus.call_sync(
            BUS_NAME, OBJECT_PATH, INTERFACE, "Cancel", GLib.Variant("(s)", (gen_id,)),
            None, Gio.DBusCallFlags.NONE, -1, None,
        )
        return GLib.SOURCE_CONTINUE

    GLib.unix_signal_add(GLib.PRIORITY_DEFAULT, signal.SIGINT, cancel)
    loop.run()
    return outcome["status"]


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
