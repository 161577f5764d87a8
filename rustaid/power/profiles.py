"""Power profiles: the inference parameters each one sets, and which one is active.

| profile     | threads    | GPU | remote | max tokens | batch | context | cache | background |
| ----------- | ---------- | --- | ------ | ---------- | ----- | ------- | ----- | ---------- |
| Performance | all cores  | yes | no     | 4096       | 512   | 8192    | yes   | yes        |
| Balanced    | all cores  | yes | no     | 1024       | 256   | 4096    | yes   | yes        |
| PowerSaver  | half cores | no  | prefer | 256        | 64    | 2048    | yes   | no         |
| UltraSaver  | 1          | no  | prefer | 64         | 32    | 1024    | no    | no         |
| Custom      | as given (every number at least 1; context at least 64)                  |

(cores: physical cores; at least 1 thread.) Which profile is active:

1. the override set with SetPowerProfile, until cleared (kept across restarts);
2. a low battery while discharging: at or below `critical_battery_percent` (or UPower's
   critical warning) -> UltraSaver; at or below `low_battery_percent` (or UPower's low
   warning) -> PowerSaver; this outranks power-profiles-daemon unless its profile is
   performance (the user asked for it) or already saves as much;
3. else power-profiles-daemon's ActiveProfile (performance / balanced / power-saver);
   without it, the battery (as in 2), otherwise `default_profile`;
4. else (no battery) `default_profile` (Balanced).
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
from dataclasses import asdict, dataclass, fields
from pathlib import Path

from rustaid.errors import InvalidArgument
from rustaid.power.config import PowerConfig
from rustaid.power.snapshot import PowerProfile, PowerStatus, ProfileSource

log = logging.getLogger(__name__)

MAX_THREADS = 1024
MAX_TOKENS = 1 << 20
MAX_BATCH = 1 << 16
MIN_CONTEXT = 64
MAX_CONTEXT = 1 << 22


@dataclass(frozen=True)
class ProfileParameters:
    threads: int
    use_gpu: bool
    prefer_remote: bool
    max_local_tokens: int
    batch_size: int
    context_length: int
    caching: bool
    background_inference: bool


# How much each automatic profile saves (more is more saving).
_SAVING = {
    PowerProfile.PERFORMANCE: 0,
    PowerProfile.BALANCED: 1,
    PowerProfile.POWER_SAVER: 2,
    PowerProfile.ULTRA_SAVER: 3,
}


def profile_parameters(profile: PowerProfile, cores: int) -> ProfileParameters:
    """The table above, for a machine with `cores` physical cores (not for Custom)."""
    cores = max(1, cores)
    if profile is PowerProfile.PERFORMANCE:
        return ProfileParameters(cores, True, False, 4096, 512, 8192, True, True)
    if profile is PowerProfile.BALANCED:
        return ProfileParameters(cores, True, False, 1024, 256, 4096, True, True)
    if profile is PowerProfile.POWER_SAVER:
        return ProfileParameters(max(1, cores // 2), False, True, 256, 64, 2048, True, False)
    if profile is PowerProfile.ULTRA_SAVER:
        return ProfileParameters(1, False, True, 64, 32, 1024, False, False)
    raise ValueError("a Custom profile has no fixed parameters")


def validate_custom(p: ProfileParameters | None) -> ProfileParameters:
    """INVALID_ARGUMENT naming the field when a Custom profile is missing or unusable."""
    if p is None:
        raise InvalidArgument(
            "POWER_PROFILE_CUSTOM needs its parameters in `custom`", field="custom"
        )

    def check(name: str, lo: int, hi: int) -> None:
        value = getattr(p, name)
        if not lo <= value <= hi:
            raise InvalidArgument(
                f"custom.{name} must be between {lo} and {hi} (got {value})",
                field=f"custom.{name}",
            )

    check("threads", 1, MAX_THREADS)
    check("max_local_tokens", 1, MAX_TOKENS)
    check("batch_size", 1, MAX_BATCH)
    check("context_length", MIN_CONTEXT, MAX_CONTEXT)
    return p


# Names that mean "no override: choose the profile automatically".
AUTOMATIC_NAMES = ("", "auto")


def parse_profile_name(name: str, field_name: str = "profile") -> PowerProfile | None:
    """A profile by name: "performance", "balanced", "power_saver", "ultra_saver" or
    "custom" ('-' may stand for '_', as power-profiles-daemon writes "power-saver").
    None for "" or "auto": back to the automatic profile. InvalidArgument otherwise."""
    if name in AUTOMATIC_NAMES:
        return None
    try:
        return PowerProfile(name.replace("-", "_"))
    except ValueError:
        names = ", ".join(p.value for p in PowerProfile)
        raise InvalidArgument(
            f"{field_name} {name[:64]!r} is not a power profile; use one of {names}, "
            "or 'auto' to return to the automatic profile",
            field=field_name,
        ) from None


_FROM_PPD = {
    "performance": PowerProfile.PERFORMANCE,
    "balanced": PowerProfile.BALANCED,
    "power-saver": PowerProfile.POWER_SAVER,
}


@dataclass(frozen=True)
class ActiveProfile:
    profile: PowerProfile
    source: ProfileSource
    parameters: ProfileParameters
    # Why this profile, e.g. "battery at 15 % and discharging".
    reason: str


class ProfileManager:
    def __init__(self, config: PowerConfig, cores: int, state_file: Path | None = None) -> None:
        self.config = config
        self.cores = max(1, cores)
        self.state_file = state_file
        self.override: tuple[PowerProfile, ProfileParameters | None] | None = None
        self._load()

    def parameters(
        self, profile: PowerProfile, custom: ProfileParameters | None = None
    ) -> ProfileParameters:
        if profile is PowerProfile.CUSTOM:
            return validate_custom(custom)
        return profile_parameters(profile, self.cores)

    def set_override(self, profile: PowerProfile, custom: ProfileParameters | None = None) -> None:
        if profile is PowerProfile.CUSTOM:
            custom = validate_custom(custom)
        elif custom is not None:
            raise InvalidArgument(
                "custom parameters only apply to POWER_PROFILE_CUSTOM", field="custom"
            )
        self.override = (profile, custom)
        log.info("power profile set to %s until cleared", profile.value)
        self._save()

    def clear_override(self) -> None:
        if self.override is not None:
            log.info("power profile override cleared: back to automatic")
        self.override = None
        self._save()

    def resolve(self, power: PowerStatus, ppd_profile: str) -> ActiveProfile:
        c = self.config
        if self.override is not None:
            profile, custom = self.override
            return ActiveProfile(
                profile, ProfileSource.OVERRIDE, self.parameters(profile, custom), "set by request"
            )
        battery = self._battery_profile(power)
        if c.follow_power_profiles_daemon and ppd_profile in _FROM_PPD:
            profile = _FROM_PPD[ppd_profile]
            # A low battery outranks the system's profile, unless its user asked for
            # performance (power-profiles-daemon itself does not react to the battery).
            if (
                battery is not None
                and _SAVING[battery[0]] > _SAVING[profile]
                and ppd_profile != "performance"
            ):
                low, why = battery
                return ActiveProfile(
                    low,
                    ProfileSource.BATTERY,
                    self.parameters(low),
                    f"{why} (over the system profile {ppd_profile})",
                )
            return ActiveProfile(
                profile,
                ProfileSource.POWER_PROFILES_DAEMON,
                self.parameters(profile),
                f"the system power profile is {ppd_profile}",
            )
        default = PowerProfile(c.default_profile.replace("-", "_"))
        if not power.battery_present:
            return ActiveProfile(
                default, ProfileSource.DEFAULT, self.parameters(default), "no battery"
            )
        if battery is not None:
            low, why = battery
            return ActiveProfile(low, ProfileSource.BATTERY, self.parameters(low), why)
        percent = f"battery at {power.battery_percent:.0f} %"
        why = f"{percent} and discharging" if power.discharging else f"{percent}, on AC power"
        return ActiveProfile(default, ProfileSource.BATTERY, self.parameters(default), why)

    def _battery_profile(self, power: PowerStatus) -> tuple[PowerProfile, str] | None:
        """UltraSaver or PowerSaver (and why) for a low battery that is discharging."""
        c = self.config
        if not (power.battery_present and power.discharging):
            return None
        percent = f"battery at {power.battery_percent:.0f} %"
        if power.battery_percent <= c.critical_battery_percent or power.warning_level >= 4:
            return PowerProfile.ULTRA_SAVER, f"{percent} (critical) and discharging"
        if power.battery_percent <= c.low_battery_percent or power.warning_level >= 3:
            return PowerProfile.POWER_SAVER, f"{percent} (low) and discharging"
        return None

    # -- persistence: the override survives a restart ------------------------------------

    def _load(self) -> None:
        if self.state_file is None or not self.state_file.exists():
            return
        try:
            data = json.loads(self.state_file.read_text(encoding="utf-8"))
            profile = PowerProfile(data["profile"])
            custom = None
            if data.get("custom") is not None:
                names = {f.name for f in fields(ProfileParameters)}
                custom = ProfileParameters(**{k: data["custom"][k] for k in names})
            if profile is PowerProfile.CUSTOM:
                custom = validate_custom(custom)
            self.override = (profile, custom)
            log.info("power profile %s (set earlier) stays until cleared", profile.value)
        except (OSError, ValueError, KeyError, TypeError, InvalidArgument) as e:
            log.warning("ignoring the saved power profile in %s: %s", self.state_file, e)

    def _save(self) -> None:
        if self.state_file is None:
            return
        try:
            if self.override is None:
                self.state_file.unlink(missing_ok=True)
                return
            profile, custom = self.override
            data = {"profile": profile.value, "custom": asdict(custom) if custom else None}
            self.state_file.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=self.state_file.parent, prefix=".power-profile.")
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                json.dump(data, f)
                f.flush()
                os.fsync(f.fileno())
            Path(tmp).replace(self.state_file)
        except OSError as e:
            log.warning("could not save the power profile to %s: %s", self.state_file, e)
