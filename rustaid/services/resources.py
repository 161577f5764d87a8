"""ResourcesService: the device's state, power profiles, cost estimates and metrics."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any

from google.protobuf.timestamp_pb2 import Timestamp

from rustaid.api.v1 import common_pb2, resources_pb2, resources_pb2_grpc
from rustaid.errors import InvalidArgument
from rustaid.services.convert import resources as convert

if TYPE_CHECKING:
    from rustaid.power.manager import ResourceManager

Context = Any  # grpc.aio.ServicerContext


class ResourcesServicer(resources_pb2_grpc.ResourcesServiceServicer):
    def __init__(self, resources: ResourceManager) -> None:
        self.resources = resources

    @property
    def _monitor(self) -> Any:
        return self.resources.monitor

    async def GetSnapshot(
        self, request: resources_pb2.GetSnapshotRequest, context: Context
    ) -> resources_pb2.GetSnapshotResponse:
        snapshot = await self._monitor.refresh(self.resources.config.max_age_s)
        return resources_pb2.GetSnapshotResponse(snapshot=convert.resource_snapshot_to_pb(snapshot))

    async def WatchSnapshots(
        self, request: resources_pb2.WatchSnapshotsRequest, context: Context
    ) -> AsyncIterator[resources_pb2.WatchSnapshotsResponse]:
        interval = convert.watch_interval_from_pb(
            request.min_interval, request.HasField("min_interval")
        )
        monitor = self._monitor
        loop = asyncio.get_running_loop()
        async with monitor.events.subscribe() as changes:
            snapshot = await monitor.refresh(self.resources.config.max_age_s)
            while True:
                yield resources_pb2.WatchSnapshotsResponse(
                    snapshot=convert.resource_snapshot_to_pb(snapshot)
                )
                sent = loop.time()
                snapshot = await changes.get()
                # At most one per interval: wait it out, then send the latest state.
                rest = interval - (loop.time() - sent)
                if rest > 0:
                    await asyncio.sleep(rest)
                with contextlib.suppress(asyncio.QueueEmpty):
                    while True:
                        snapshot = changes.get_nowait()

    async def GetPowerProfile(
        self, request: resources_pb2.GetPowerProfileRequest, context: Context
    ) -> resources_pb2.GetPowerProfileResponse:
        return resources_pb2.GetPowerProfileResponse(
            **convert.active_profile_fields(self._monitor.active_profile)  # type: ignore[arg-type]
        )

    async def SetPowerProfile(
        self, request: resources_pb2.SetPowerProfileRequest, context: Context
    ) -> resources_pb2.SetPowerProfileResponse:
        # The message's shape (which fields go together) is checked here; the profile and
        # its parameters by the resource manager, as for D-Bus.
        custom = (
            convert.profile_parameters_from_pb(request.custom)
            if request.HasField("custom")
            else None
        )
        if request.clear_override:
            if request.profile != common_pb2.POWER_PROFILE_UNSPECIFIED:
                raise InvalidArgument(
                    "clear_override returns to the automatic profile: give no profile with it",
                    field="profile",
                )
            profile = None
        else:
            if request.profile == common_pb2.POWER_PROFILE_UNSPECIFIED:
                raise InvalidArgument(
                    "give a profile (POWER_PROFILE_PERFORMANCE, _BALANCED, _POWER_SAVER, "
                    "_ULTRA_SAVER or _CUSTOM with `custom`), or clear_override",
                    field="profile",
                )
            profile = convert.power_profile_from_pb(request.profile)
        active = self.resources.set_power_profile(profile, custom)
        return resources_pb2.SetPowerProfileResponse(
            **convert.active_profile_fields(active)  # type: ignore[arg-type]
        )

    async def EstimateCost(
        self, request: resources_pb2.EstimateCostRequest, context: Context
    ) -> resources_pb2.EstimateCostResponse:
        estimate = await self.resources.estimate_cost(
            request.model_id, request.prompt_tokens, request.max_tokens
        )
        return convert.estimate_cost_response_to_pb(estimate)

    async def GetMetrics(
        self, request: resources_pb2.GetMetricsRequest, context: Context
    ) -> resources_pb2.GetMetricsResponse:
        metrics = self.resources.metrics
        since = Timestamp()
        since.FromNanoseconds(int(metrics.since * 1e9))
        return resources_pb2.GetMetricsResponse(
            requests=metrics.requests,
            errors=metrics.errors,
            models=[convert.model_metrics_to_pb(m) for m in metrics.models()],
            since=since,
        )

    async def ResetMetrics(
        self, request: resources_pb2.ResetMetricsRequest, context: Context
    ) -> resources_pb2.ResetMetricsResponse:
        self.resources.metrics.reset()
        return resources_pb2.ResetMetricsResponse()
