"""rustaid: a local AI daemon for Linux devices."""

__version__ = "0.1.0"
