"""Over-the-air updates of models and plugins: signed metadata (metadata.py), the
publisher's tools (publish.py), bounded downloads (download.py), A/B slots (slots.py),
a durable journal (journal.py), and the UpdateManager (manager.py), a facade over the
checker, installer, recovery, scheduler and reporter modules.

Importing this package is cheap: `cryptography` and `apscheduler` load on first use.
See docs/updates.md.
"""
