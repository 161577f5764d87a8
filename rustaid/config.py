"""Settings: defaults < `<data-dir>/config/rustaid.toml` < RUSTAID_* environment < flags.

One typed object; everything else receives it rather than reading files or env itself.
"""

from __future__ import annotations

import os
import tomllib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from rustaid.addresses import is_loopback_host, parse_http_listen, parse_metrics_listen
from rustaid.errors import InvalidArgument

LOG_LEVELS = ("debug", "info", "warning", "error")
LOG_FORMATS = ("text", "json")
# gRPC's own ceiling for a message is just under 2 GiB.
MAX_MESSAGE_MB_LIMIT = 2047


def _user_runtime_dir() -> Path:
    xdg = os.environ.get("XDG_RUNTIME_DIR")
    return Path(xdg) if xdg else Path(f"/tmp/rustaid-{os.getuid()}")


def default_data_dir(system: bool) -> Path:
    if system:
        return Path("/var/lib/rustaid")
    xdg = os.environ.get("XDG_DATA_HOME")
    return (Path(xdg) if xdg else Path.home() / ".local" / "share") / "rustaid"


def default_socket(system: bool) -> Path:
    if system:
        return Path("/run/rustaid/rustaid.sock")
    return _user_runtime_dir() / "rustaid" / "rustaid.sock"


# Most requests one model serves at once (each holds a KV cache of its own).
MAX_PARALLEL = 64


@dataclass(frozen=True)
class Settings:
    data_dir: Path
    # gRPC listen addresses: "unix:///path" or "HOST:PORT".
    listen: tuple[str, ...]
    system: bool = False
    log_level: str = "info"
    # "text" (journald's format under systemd) or "json" (OpenTelemetry log records).
    log_format: str = "text"
    # Unix socket permissions: owner and group may connect, nobody else.
    socket_mode: int = 0o660
    socket_group: str = ""
    # Seconds in-flight requests get to finish on SIGTERM before they are cancelled.
    shutdown_grace_s: float = 10.0
    # Generation limits.
    default_max_tokens: int = 512
    max_tokens_limit: int = 32768
    # Cap on the context a model is loaded with (the model's own length when smaller).
    max_context_length: int = 4096
    # 0: one thread per physical core.
    threads: int = 0
    # Requests a loaded llama.cpp model serves at once (continuous batching); 0: from the
    # cores and the memory budget (1 on a single core).
    parallel: int = 0
    # Requests allowed to wait per loaded model before RESOURCE_EXHAUSTED.
    max_queue_per_model: int = 64
    # Requests one client may have in flight (waiting ones included); 0: no limit.
    max_requests_per_client: int = 8
    # Unix socket connections (through the peer-credentials relay) one client may hold
    # at once (0: no limit; root has none), and all clients together (0: as many as
    # the open-file limit carries, at most 1024; a sixteenth kept for administrators).
    max_connections_per_client: int = 32
    max_connections: int = 0
    # Largest prompt (all messages of a chat turn together) in UTF-8 bytes; 0: no limit.
    max_prompt_bytes: int = 1 << 20
    # Largest grammar (params.grammar, params.json_schema, or the grammar a schema or a
    # request's tools become) in UTF-8 bytes, and most rules in it. (What makes
    # compiling slow, its choices, is bounded by the llama.cpp engine itself.)
    max_grammar_bytes: int = 256 << 10
    max_grammar_rules: int = 4096
    # Largest gRPC message the daemon receives or sends, in MiB.
    max_message_mb: int = 16
    # Memory for loaded models: a fixed size, or 0 for a share of the available memory.
    memory_budget_mb: int = 0
    memory_budget_fraction: float = 0.8
    # Seconds an idle model stays loaded (-1: until evicted or unloaded; 0: unload after use).
    keep_alive_s: float = 300.0
    # Evaluated prompt states kept per model for chat sessions (0 disables).
    prompt_cache_mb: int = 256
    # Drop-in plugin folder enabled.
    drop_in_plugins: bool = True
    # Entry-point plugins enabled (RUSTAID_ENTRY_POINT_PLUGINS=0 disables them, e.g. in tests).
    entry_point_plugins: bool = True
    # Prometheus metrics on a loopback HOST:PORT, e.g. "127.0.0.1:9464"; "" is off.
    metrics_listen: str = ""
    # -- Who may call what (docs/security.md) --
    # Unix socket peers identified by SO_PEERCRED (default: on for the system service).
    # Off, whoever can open the socket is an administrator.
    peer_credentials: bool = False
    # Administrators besides root and the daemon's own user (changing RPCs).
    admin_group: str = ""
    admin_uids: tuple[int, ...] = ()
    # TCP listeners: TLS certificate chain and key (PEM); client certificates signed by
    # tls_client_ca (mTLS), and/or bearer tokens from token_file (default
    # <data-dir>/config/tokens.json; `rustaid token add`). Relative paths: config dir.
    tls_cert: str = ""
    tls_key: str = ""
    tls_client_ca: str = ""
    # Client certificate names (subject CN or SAN) that are administrators.
    admin_cert_names: tuple[str, ...] = ()
    token_file: str = ""
    # Plain TCP, on loopback addresses only.
    allow_insecure_tcp: bool = False
    # -- HTTP front end: OpenAI- and Ollama-compatible routes (docs/http-api.md) --
    # "HOST:PORT" (loopback unless tls_cert is set) or "unix:///path"; none: off.
    http_listen: tuple[str, ...] = ()
    # Browser origins allowed to call it (CORS), e.g. "http://localhost:3000"; none: no
    # browser page of another origin may.
    http_cors_origins: tuple[str, ...] = ()
    # Host header names accepted besides localhost and the listen addresses (a check
    # against DNS rebinding), e.g. the machine's name when it listens with TLS.
    http_allowed_hosts: tuple[str, ...] = ()
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def models_dir(self) -> Path:
        return self.data_dir / "models"

    @property
    def plugins_dir(self) -> Path:
        return self.data_dir / "plugins"

    @property
    def config_dir(self) -> Path:
        return self.data_dir / "config"

    @property
    def state_dir(self) -> Path:
        return self.data_dir / "state"

    def ensure_dirs(self) -> None:
        for d in (self.models_dir, self.plugins_dir, self.config_dir, self.state_dir):
            d.mkdir(parents=True, exist_ok=True)


# Keys a user may set in rustaid.toml / RUSTAID_<KEY> (data_dir and system come from flags).
_TUNABLE = {
    f.name: f.type for f in fields(Settings) if f.name not in ("data_dir", "system", "extra")
}


def _coerce(key: str, value: Any, source: str) -> Any:
    kind = _TUNABLE[key]
    try:
        if kind == "tuple[int, ...]":
            if isinstance(value, str):
                value = [int(v.strip()) for v in value.split(",") if v.strip()]
            if not isinstance(value, list) or not all(
                isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in value
            ):
                raise ValueError("expected a list of non-negative integers")
            return tuple(value)
        if kind == "tuple[str, ...]":
            if isinstance(value, str):
                value = [v for v in value.split(",") if v]
            if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
                raise ValueError("expected a list of strings")
            return tuple(value)
        if kind == "bool":
            if isinstance(value, str):
                if value.lower() in ("1", "true", "yes", "on"):
                    return True
                if value.lower() in ("0", "false", "no", "off"):
                    return False
                raise ValueError("expected true or false")
            if not isinstance(value, bool):
                raise ValueError("expected true or false")
            return value
        if kind == "int":
            if isinstance(value, str):
                return int(value, 0)
            if isinstance(value, bool) or not isinstance(value, int):
                raise ValueError("expected an integer")
            return value
        if kind == "float":
            if isinstance(value, bool):
                raise ValueError("expected a number")
            return float(value)
        if not isinstance(value, str):
            raise ValueError("expected a string")
        return value
    except ValueError as e:
        raise InvalidArgument(f"{source}: setting '{key}': {e} (got {value!r})", field=key) from e


def _validate(s: Settings) -> Settings:
    if s.log_level not in LOG_LEVELS:
        raise InvalidArgument(
            f"log_level must be one of {', '.join(LOG_LEVELS)} (got {s.log_level!r})",
            field="log_level",
        )
    if s.log_format not in LOG_FORMATS:
        raise InvalidArgument(
            f"log_format must be one of {', '.join(LOG_FORMATS)} (got {s.log_format!r})",
            field="log_format",
        )
    if not s.listen:
        raise InvalidArgument("at least one listen address is required", field="listen")
    for name in (
        "max_requests_per_client",
        "max_prompt_bytes",
        "max_connections_per_client",
        "max_connections",
    ):
        if getattr(s, name) < 0:
            raise InvalidArgument(f"{name} must be >= 0 (0: no limit)", field=name)
    for name in ("max_grammar_bytes", "max_grammar_rules"):
        if getattr(s, name) < 1:
            raise InvalidArgument(f"{name} must be >= 1", field=name)
    if not 1 <= s.max_message_mb <= MAX_MESSAGE_MB_LIMIT:
        raise InvalidArgument(
            f"max_message_mb must be between 1 and {MAX_MESSAGE_MB_LIMIT} (got {s.max_message_mb})",
            field="max_message_mb",
        )
    for name in ("default_max_tokens", "max_tokens_limit", "max_context_length"):
        if getattr(s, name) < 1:
            raise InvalidArgument(f"{name} must be >= 1", field=name)
    if not 0 < s.memory_budget_fraction <= 1:
        raise InvalidArgument(
            "memory_budget_fraction must be in (0, 1]", field="memory_budget_fraction"
        )
    if not 0 <= s.parallel <= MAX_PARALLEL:
        raise InvalidArgument(
            f"parallel must be between 0 (automatic) and {MAX_PARALLEL} (got {s.parallel})",
            field="parallel",
        )
    if s.memory_budget_mb < 0 or s.prompt_cache_mb < 0:
        raise InvalidArgument(
            "memory_budget_mb and prompt_cache_mb must be >= 0", field="memory_budget_mb"
        )
    if s.keep_alive_s < 0 and s.keep_alive_s != -1:
        raise InvalidArgument("keep_alive_s must be >= 0, or -1 for never", field="keep_alive_s")
    if s.default_max_tokens > s.max_tokens_limit:
        raise InvalidArgument(
            "default_max_tokens must not exceed max_tokens_limit", field="default_max_tokens"
        )
    parse_metrics_listen(s.metrics_listen)  # loopback only: the metrics reveal usage
    parse_http_listen(s.http_listen, tls=bool(s.tls_cert))
    for origin in s.http_cors_origins:
        scheme, sep, rest = origin.partition("://")
        if scheme not in ("http", "https") or not sep or not rest or "/" in rest:
            raise InvalidArgument(
                f"http_cors_origins entry {origin!r} must be an origin such as "
                "'http://localhost:3000' (scheme, host and port, no path)",
                field="http_cors_origins",
            )
    _validate_transport_security(s)
    return s


def _validate_transport_security(s: Settings) -> None:
    """TCP needs TLS, except on loopback when allow_insecure_tcp says so (docs/security.md)."""
    if bool(s.tls_cert) != bool(s.tls_key):
        missing = "tls_key" if s.tls_cert else "tls_cert"
        raise InvalidArgument(
            f"tls_cert and tls_key go together: set {missing} too (PEM files)", field=missing
        )
    if s.tls_client_ca and not s.tls_cert:
        raise InvalidArgument(
            "tls_client_ca needs TLS: set tls_cert and tls_key as well", field="tls_cert"
        )
    for address in s.listen:
        if address.startswith("unix:") or s.tls_cert:
            continue
        host = address.rsplit(":", 1)[0].strip("[]") if ":" in address else address
        if not is_loopback_host(host):
            raise InvalidArgument(
                f"listen address {address!r} is reachable from other machines and needs "
                "TLS: set tls_cert and tls_key (with tls_client_ca or tokens), or listen "
                "on 127.0.0.1",
                field="tls_cert",
            )
        if not s.allow_insecure_tcp:
            raise InvalidArgument(
                f"listen address {address!r} is plain TCP, which every local user can "
                "reach: set tls_cert and tls_key, or allow_insecure_tcp = true to accept "
                "plain TCP on loopback",
                field="allow_insecure_tcp",
            )


def load_settings(
    *,
    data_dir: Path | None = None,
    system: bool | None = None,
    overrides: dict[str, Any] | None = None,
    environ: dict[str, str] | None = None,
) -> Settings:
    """Build the settings from every source; raises InvalidArgument naming the bad key."""
    env = dict(os.environ) if environ is None else environ
    # The system service is asked for (`--system`, as its unit does), never guessed from
    # the user: root at a terminal gets a per-user instance like anyone else.
    is_system = bool(system)
    if data_dir is None and env.get("RUSTAID_DATA_DIR"):
        data_dir = Path(env["RUSTAID_DATA_DIR"])
    root = (data_dir or default_data_dir(is_system)).expanduser().absolute()
    settings = Settings(
        data_dir=root,
        listen=(f"unix://{default_socket(is_system)}",),
        system=is_system,
        # The system service tells its users (and group members from administrators)
        # apart; a user's own daemon tells that user's processes apart, so that one app
        # cannot take every other app's share of connections and requests.
        peer_credentials=True,
    )
    values: dict[str, Any] = {}
    extra: dict[str, Any] = {}
    toml_path = settings.config_dir / "rustaid.toml"
    if toml_path.is_file():
        try:
            doc = tomllib.loads(toml_path.read_text(encoding="utf-8"))
        except tomllib.TOMLDecodeError as e:
            raise InvalidArgument(f"{toml_path}: {e}") from e
        for key, value in doc.items():
            if key in _TUNABLE:
                values[key] = _coerce(key, value, str(toml_path))
            else:
                extra[key] = value  # sections for later subsystems ([power], [updates]...)
    for key in _TUNABLE:
        env_value = env.get(f"RUSTAID_{key.upper()}")
        if env_value is not None:
            values[key] = _coerce(key, env_value, f"RUSTAID_{key.upper()}")
    for key, value in (overrides or {}).items():
        if value is not None:
            values[key] = _coerce(key, value, "command line")
    return _validate(replace(settings, extra=extra, **values))


# -- The settings in force -------------------------------------------------------------

# Settings a reload cannot apply to a running daemon: sockets and listeners bound at
# start, and plugin discovery. Every other top-level key applies at once, because the
# subsystems read it through SettingsSource when they need it.
RESTART_KEYS = (
    "socket_mode", "socket_group", "max_message_mb", "log_format", "drop_in_plugins",
    "entry_point_plugins", "metrics_listen", "peer_credentials", "tls_cert", "tls_key",
    "tls_client_ca", "allow_insecure_tcp", "http_listen",
)  # fmt: skip


# What subsystems hold to read the settings in force (a SettingsSource, or in tests any
# function returning Settings).
CurrentSettings = Callable[[], Settings]


@dataclass(frozen=True)
class Section:
    """A `[name]` table of rustaid.toml and the subsystem's check of it (raises
    InvalidArgument naming the key). `live`: a reload applies it (the subsystem reads
    it again from the current settings); otherwise it needs a restart."""

    name: str
    check: Callable[[Settings], object]
    live: bool


class SettingsSource:
    """The one place the daemon's current settings come from.

    Subsystems hold this source (it is a `Callable[[], Settings]`) and call it when they
    need a value, or `listen()` for replacements; none keeps a copy that a reload could
    leave behind. Every section is checked whenever settings are accepted, at start
    and at each reload, so a mistake is reported at once and the settings in force stay
    whole."""

    def __init__(self, settings: Settings, sections: Sequence[Section] = ()) -> None:
        self._sections = tuple(sections)
        self._check(settings)
        self._current = settings
        self._listeners: list[Callable[[Settings, Settings], None]] = []

    def __call__(self) -> Settings:
        return self._current

    @property
    def sections(self) -> tuple[Section, ...]:
        return self._sections

    def listen(self, callback: Callable[[Settings, Settings], None]) -> Callable[[], None]:
        """Call `callback(old, new)` after each replacement; returns the stopper."""
        self._listeners.append(callback)
        return lambda: self._listeners.remove(callback) if callback in self._listeners else None

    def _check(self, settings: Settings) -> None:
        for section in self._sections:
            section.check(settings)  # its InvalidArgument names the section and key

    def needs_restart(self, new: Settings) -> list[str]:
        """What differs between the settings in force and `new` that only a restart
        applies, as rustaid.toml names it."""
        old = self._current
        keys = [k for k in RESTART_KEYS if getattr(old, k) != getattr(new, k)]
        sections = [
            f"[{s.name}]"
            for s in self._sections
            if not s.live and old.extra.get(s.name) != new.extra.get(s.name)
        ]
        return keys + sections

    def replace(self, new: Settings) -> list[str]:
        """Put `new` in force (after checking every section: InvalidArgument keeps the
        old ones); returns what it changed that needs a restart."""
        self._check(new)
        later = self.needs_restart(new)
        old, self._current = self._current, new
        for listener in list(self._listeners):
            listener(old, new)
        return later
