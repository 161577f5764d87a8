"""The HTTP front end: OpenAI- and Ollama-compatible routes over the daemon's core.

Off unless `http_listen` is set; Starlette and uvicorn are imported only then
(rustaid.http.server). Only `listen` is imported by the settings."""
