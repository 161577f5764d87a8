"""What the HTTP front end serves, built by the composition root (rustaid.daemon)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from rustaid.auth.manager import Auth
    from rustaid.config import CurrentSettings
    from rustaid.core.engine import Engine
    from rustaid.core.folder import ModelFolder
    from rustaid.power.manager import ResourceManager
    from rustaid.pull.puller import Puller
    from rustaid.rag.manager import Rag


@dataclass(frozen=True)
class HttpParts:
    settings: CurrentSettings
    engine: Engine
    rag: Rag
    resources: ResourceManager
    puller: Puller
    folder: ModelFolder
    auth: Auth
