"""Device awareness: memory, heat and power from the sources Linux already has, power
profiles, and the adaptive inference policy built on them (see docs/power.md).

`ResourceManager` (manager.py) is what the daemon owns; `InferencePolicy` (policy.py)
is what the engine calls for every request.
"""

from rustaid.power.manager import CostEstimate, ResourceManager
from rustaid.power.policy import Adjusted, Adjustment, InferencePolicy, adapt
from rustaid.power.profiles import ActiveProfile, ProfileParameters, profile_parameters
from rustaid.power.snapshot import (
    BatteryState,
    PowerProfile,
    PressureLevel,
    ProfileSource,
    ResourceSnapshot,
    ThermalState,
)

__all__ = [
    "ActiveProfile",
    "Adjusted",
    "Adjustment",
    "BatteryState",
    "CostEstimate",
    "InferencePolicy",
    "PowerProfile",
    "PressureLevel",
    "ProfileParameters",
    "ProfileSource",
    "ResourceManager",
    "ResourceSnapshot",
    "ThermalState",
    "adapt",
    "profile_parameters",
]
