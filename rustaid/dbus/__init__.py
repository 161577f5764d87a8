"""The daemon's own D-Bus API for desktop apps (org.rustai.Daemon1; docs/dbus.md)."""
