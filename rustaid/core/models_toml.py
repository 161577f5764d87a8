"""`config/models.toml`: models declared by hand, and overrides for discovered files.

```toml
[[model]]
id = "chat"                      # optional for a path entry: overrides the derived id
path = "qwen2.5-0.5b-q8_0.gguf"  # relative to models/, or absolute
priority = 10
tags = ["chat", "fast"]
quality = 6.5                    # 0..10, used by prefer_quality
context_length = 2048
threads = 2
parallel = 4                     # requests served at once (continuous batching)
gpu_layers = 0
batch_size = 256
chat_format = "chatml"
keep_alive = "10m"               # seconds, "30s"/"10m"/"2h", 0 = unload after use, -1 = never
min_memory = "1 GB"
max_battery_draw_mw = 5000

[[model]]
id = "remote-mini"
provider = "openai"              # a remote engine plugin
url = "http://127.0.0.1:8080/v1"
remote_model = "gpt-4o-mini"
api_key_env = "OPENAI_API_KEY"   # the key's variable name; the key itself never lives here
```
A bad entry is reported with the file, its line and the reason; the others still load.
"""

from __future__ import annotations

import math
import re
import tomllib
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from rustaid.config import MAX_PARALLEL

_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmgt]?i?b?)?\s*$", re.IGNORECASE)
_UNITS = {"": 1, "b": 1, "k": 1e3, "kb": 1e3, "kib": 1024, "m": 1e6, "mb": 1e6, "mib": 1 << 20,
          "g": 1e9, "gb": 1e9, "gib": 1 << 30, "t": 1e12, "tb": 1e12, "tib": 1 << 40}  # fmt: skip
_DURATION = re.compile(r"^\s*(-?\d+(?:\.\d+)?)\s*(ms|s|m|h)?\s*$")
_SECONDS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, None: 1}
T = TypeVar("T")

KNOWN_KEYS = {
    "id", "path", "url", "provider", "remote_model", "api_key_env", "priority", "tags",
    "quality", "context_length", "threads", "parallel", "gpu_layers", "batch_size", "chat_format",
    "keep_alive", "min_memory", "max_battery_draw_mw", "timeout_s", "max_retries",
}  # fmt: skip


@dataclass(frozen=True)
class ModelConfig:
    """Per-model settings; 0 / "" / None mean "the default"."""

    context_length: int = 0
    threads: int = 0
    gpu_layers: int = 0
    batch_size: int = 0
    parallel: int = 0  # sequences served at once; 0: the daemon's setting
    chat_format: str = ""
    # Seconds a model stays loaded after its last use: None default, 0 unload now, -1 never.
    keep_alive_s: float | None = None


@dataclass(frozen=True)
class Constraints:
    min_memory_bytes: int = 0
    max_battery_draw_mw: int = 0


@dataclass(frozen=True)
class TomlModel:
    line: int
    id: str = ""
    path: Path | None = None
    url: str = ""
    provider: str = ""
    priority: int = 0
    tags: tuple[str, ...] = ()
    quality: float = 0.0
    config: ModelConfig = field(default_factory=ModelConfig)
    constraints: Constraints = field(default_factory=Constraints)
    # Provider-specific settings (remote_model, api_key_env, timeout_s, max_retries).
    options: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class TomlProblem:
    line: int
    id: str
    reason: str

    def message(self, source: Path) -> str:
        where = f"{source.name}:{self.line}" if self.line else source.name
        return f"{where}: {self.reason}"


def parse_size(value: object) -> int:
    if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        return value
    if isinstance(value, str) and (m := _SIZE.match(value)):
        unit = (m.group(2) or "").lower()
        size = float(m.group(1)) * _UNITS[unit] if unit in _UNITS else math.inf
        if math.isfinite(size):
            return int(size)
    raise ValueError(f"expected a size like 512000000 or '1.5 GB' (got {value!r})")


def parse_duration(value: object) -> float:
    if isinstance(value, int | float) and not isinstance(value, bool):
        seconds = float(value)
    elif isinstance(value, str) and (m := _DURATION.match(value)):
        seconds = float(m.group(1)) * _SECONDS[m.group(2)]
    else:
        raise ValueError(f"expected seconds or a duration like '10m' (got {value!r})")
    if not math.isfinite(seconds):
        raise ValueError(f"must be a finite number of seconds, or -1 for never (got {value!r})")
    if seconds < 0 and seconds != -1:
        raise ValueError(f"must be >= 0, or -1 for never (got {value!r})")
    return seconds


def _keyed(key: str, parse: Callable[[object], T], value: object) -> T:
    """`parse(value)`, its ValueError naming the key."""
    try:
        return parse(value)
    except ValueError as e:
        raise ValueError(f"{key}: {e}") from None


def _table_lines(text: str) -> list[int]:
    """Line number of each [[model]] header, in order (tomllib reports no positions)."""
    return [
        i for i, line in enumerate(text.splitlines(), 1) if re.match(r"\s*\[\[\s*model\s*]]", line)
    ]


def _int(raw: dict[str, Any], key: str, minimum: int = 0) -> int:
    value = raw.get(key, 0)
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{key} must be an integer >= {minimum} (got {value!r})")
    return value


def _parallel(raw: dict[str, Any]) -> int:
    value = _int(raw, "parallel")
    if value > MAX_PARALLEL:
        raise ValueError(f"parallel must be at most {MAX_PARALLEL} (got {value})")
    return value


def _entry(raw: dict[str, Any], line: int, models_dir: Path) -> TomlModel:
    unknown = sorted(set(raw) - KNOWN_KEYS)
    if unknown:
        raise ValueError(f"unknown key(s) {', '.join(unknown)}")
    for key in ("id", "path", "url", "provider", "chat_format", "remote_model", "api_key_env"):
        if key in raw and not isinstance(raw[key], str):
            raise ValueError(f"{key} must be a string (got {raw[key]!r})")
    if bool(raw.get("path")) == bool(raw.get("url")):
        raise ValueError("give exactly one of path (a model file) or url (a remote endpoint)")
    if raw.get("url") and not raw.get("id"):
        raise ValueError("a url entry needs an id")
    if raw.get("url") and not raw.get("provider"):
        raise ValueError("a url entry needs a provider (e.g. 'openai' or 'anthropic')")
    if raw.get("url") and not re.match(r"^https?://", raw["url"]):
        raise ValueError(f"url must start with http:// or https:// (got {raw['url']!r})")
    if "id" in raw and not re.fullmatch(r"[a-z0-9][a-z0-9._/-]*", raw["id"]):
        raise ValueError(f"id {raw['id']!r} must be lower-case letters, digits and . _ / -")
    tags = raw.get("tags", [])
    if not isinstance(tags, list) or not all(isinstance(t, str) and t for t in tags):
        raise ValueError("tags must be a list of non-empty strings")
    priority = raw.get("priority", 0)
    if isinstance(priority, bool) or not isinstance(priority, int):
        raise ValueError(f"priority must be an integer (got {priority!r})")
    quality = raw.get("quality", 0.0)
    if isinstance(quality, bool) or not isinstance(quality, int | float) or not 0 <= quality <= 10:
        raise ValueError(f"quality must be a number from 0 to 10 (got {quality!r})")
    path = None
    if raw.get("path"):
        try:
            path = Path(raw["path"]).expanduser()
        except RuntimeError as e:  # ~user of an unknown user, or no home directory
            raise ValueError(f"path {raw['path']!r}: cannot expand '~': {e}") from None
        path = path if path.is_absolute() else models_dir / path
    config = ModelConfig(
        context_length=_int(raw, "context_length"),
        threads=_int(raw, "threads"),
        parallel=_parallel(raw),
        gpu_layers=_int(raw, "gpu_layers"),
        batch_size=_int(raw, "batch_size"),
        chat_format=raw.get("chat_format", ""),
        keep_alive_s=_keyed("keep_alive", parse_duration, raw["keep_alive"])
        if "keep_alive" in raw
        else None,
    )
    constraints = Constraints(
        min_memory_bytes=_keyed("min_memory", parse_size, raw.get("min_memory", 0)),
        max_battery_draw_mw=_int(raw, "max_battery_draw_mw"),
    )
    options: dict[str, Any] = {
        k: raw[k] for k in ("remote_model", "api_key_env", "timeout_s", "max_retries") if k in raw
    }
    return TomlModel(
        line=line,
        id=raw.get("id", ""),
        path=path,
        url=raw.get("url", ""),
        provider=raw.get("provider", ""),
        priority=priority,
        tags=tuple(tags),
        quality=float(quality),
        config=config,
        constraints=constraints,
        options=options,
    )


def load_models_toml(
    source: Path, models_dir: Path, providers: Iterable[str]
) -> tuple[list[TomlModel], list[TomlProblem]]:
    """Parse models.toml; returns the valid entries and one problem per invalid one."""
    if not source.is_file():
        return [], []
    text = source.read_text(encoding="utf-8", errors="replace")
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        line = int(m.group(1)) if (m := re.search(r"line (\d+)", str(e))) else 0
        return [], [TomlProblem(line, "", f"not valid TOML: {e}")]
    extra = sorted(set(doc) - {"model"})
    problems = [TomlProblem(0, "", f"unknown top-level key(s) {', '.join(extra)}")] if extra else []
    tables = doc.get("model", [])
    if not isinstance(tables, list):
        return [], [*problems, TomlProblem(0, "", "'model' must be an array of tables: [[model]]")]
    lines = _table_lines(text)
    known_providers = set(providers)
    entries: list[TomlModel] = []
    for i, raw in enumerate(tables):
        line = lines[i] if i < len(lines) else 0
        if not isinstance(raw, dict):
            problems.append(
                TomlProblem(line, "", f"model {i + 1}: 'model' entries must be tables: [[model]]")
            )
            continue
        model_id = raw.get("id", "") if isinstance(raw.get("id"), str) else ""
        try:
            entry = _entry(raw, line, models_dir)
            if entry.provider and entry.provider not in known_providers:
                raise ValueError(
                    f"unknown provider {entry.provider!r}; active engine plugins: "
                    f"{', '.join(sorted(known_providers)) or 'none'}"
                )
        except ValueError as e:
            problems.append(TomlProblem(line, model_id, f"model {model_id or i + 1}: {e}"))
            continue
        entries.append(entry)
    return entries, problems
