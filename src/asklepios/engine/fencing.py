"""Fencing through the node's BMC: ForceOff, then wait for the BMC to say Off; On again later.

Kubernetes documents "make sure the node is off" as the precondition of the
out-of-service taint. With ASKLEPIOS_FENCING=redfish, a node that every other signal
calls dead is powered off through its BMC, and the taint follows only once the BMC
reports PowerState Off (a BMC that already says Off is enough). The single Redfish
requests are the `BmcPort`'s (sushy in a worker thread); the sequence, its timeout
and its clock are here, so they run on a fake clock in tests.
"""

from __future__ import annotations

import logging

import anyio
import attrs

from asklepios.core.evidence import FenceOutcome, HoldReason
from asklepios.core.fencing import BmcTarget, FencingError, bmc_target
from asklepios.core.node import NodeView
from asklepios.engine.clock import Clock
from asklepios.engine.ports import BmcPort, CredentialsPort
from asklepios.observe import metrics

log = logging.getLogger("asklepios.fencing")
OFF, ON = "Off", "On"


@attrs.define(eq=False)
class Fencer:
    bmc: BmcPort
    credentials: CredentialsPort
    clock: Clock
    timeout: float  # ASKLEPIOS_FENCING_TIMEOUT_SECONDS
    insecure: bool = False
    poll_interval: float = 1.0

    async def target(self, view: NodeView) -> BmcTarget:
        return bmc_target(view.name, view.bmc, await self.credentials.secret(), insecure=self.insecure)

    async def power_off(self, view: NodeView) -> FenceOutcome:
        """Power the node off and wait until its BMC confirms Off (at most `timeout`)."""
        if not view.bmc:
            return FenceOutcome(
                off=False, reason=HoldReason.NO_BMC, error="the node has no asklepios.io/bmc annotation"
            )
        try:
            target = await self.target(view)
            if await self.bmc.power_state(target) == OFF:  # not ours: never switched on by Asklepios
                metrics.FENCING.labels(action="off", result="ok").inc()
                return FenceOutcome(off=True, found_off=True)
            started = self.clock.monotonic()
            await self.bmc.reset(target, "ForceOff")
            log.warning("ForceOff sent", extra={"node": view.name, "bmc": target.system_url})
            outcome = await self._wait_off(target, started)
        except FencingError as exc:
            outcome = FenceOutcome(off=False, reason=HoldReason.FENCING_FAILED, error=str(exc))
        metrics.FENCING.labels(action="off", result="ok" if outcome.off else "failed").inc()
        if outcome.off:
            metrics.FENCING_SECONDS.observe(outcome.seconds)
        return outcome

    async def _wait_off(self, target: BmcTarget, started: float) -> FenceOutcome:
        state, error = "unknown", ""
        while True:
            try:
                state, error = await self.bmc.power_state(target), ""
            except FencingError as exc:  # one failed read is not the end: keep asking until the timeout
                error = str(exc)
            elapsed = self.clock.monotonic() - started
            if state == OFF and not error:
                return FenceOutcome(off=True, seconds=elapsed)
            if elapsed >= self.timeout:
                why = error or f"PowerState still {state}"
                return FenceOutcome(
                    off=False, reason=HoldReason.FENCING_FAILED, error=f"{why} {self.timeout:.0f}s after ForceOff"
                )
            await anyio.sleep(self.poll_interval)

    async def power_on(self, view: NodeView) -> None:
        """Switch a fenced node on again (no-op when its BMC already says On); raises FencingError."""
        try:
            target = await self.target(view)
            if await self.bmc.power_state(target) != ON:
                await self.bmc.reset(target, "On")
        except FencingError:
            metrics.FENCING.labels(action="on", result="failed").inc()
            raise
        metrics.FENCING.labels(action="on", result="ok").inc()

    async def power_state(self, view: NodeView) -> str:
        """For `asklepios status`: the PowerState the BMC reports now."""
        return await self.bmc.power_state(await self.target(view))
