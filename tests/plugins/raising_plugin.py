"""A drop-in fixture that raises while being imported (copied into a plugins folder;
never imported as tests.plugins.raising_plugin)."""

raise RuntimeError("boom at import")
