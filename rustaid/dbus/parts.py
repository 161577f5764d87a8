"""What the D-Bus API serves, built by the composition root (rustaid.daemon)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from rustaid.config import CurrentSettings
    from rustaid.core.engine import Engine
    from rustaid.power.manager import ResourceManager
    from rustaid.rag.manager import Rag
    from rustaid.updates.manager import UpdateManager


@dataclass(frozen=True)
class DBusParts:
    settings: CurrentSettings
    engine: Engine
    rag: Rag
    resources: ResourceManager
    updates: UpdateManager
