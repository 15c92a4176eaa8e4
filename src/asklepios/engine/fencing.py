"""Fencing through the node's BMC: same machine?, ForceOff, then wait for the BMC to say Off; On again later.

Kubernetes documents "make sure the node is off" as the precondition of the
out-of-service taint. With ASKLEPIOS_FENCING=redfish, a node that every other signal
calls dead is powered off through its BMC, and the taint follows only once the BMC
reports PowerState Off. The BMC comes only from the fencing Secret (`<node>.url`),
read once per attempt; before any ForceOff its System UUID must name the node's own
machine (`core.fencing.same_machine`). A BMC that already says Off is enough, and is
reported as `found_off` (no ForceOff sent), so that Asklepios never switches on a
machine it did not switch off. The single Redfish requests are the `BmcPort`'s (sushy
in a worker thread); the sequence, its timeout and its clock are here, so they run on
a fake clock in tests.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable

import anyio
import attrs

from asklepios.core.evidence import FenceOutcome, HoldReason
from asklepios.core.fencing import BmcTarget, FencingError, NoBmcError, bmc_target, mismatch
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
        """The node's BMC from the Secret, read now; NoBmcError when it has no `<node>.url`."""
        secret = await self.credentials.secret()
        return bmc_target(view.name, secret, insecure=self.insecure, where=self.credentials.where)

    async def same_machine(self, view: NodeView, target: BmcTarget) -> str:
        """ "" when the BMC's System may be the node's machine, else why not (nothing is sent to it)."""
        if not view.system_uuid:
            return ""
        return mismatch(await self.bmc.system_uuid(target), view.name, view.system_uuid, target.system_url)

    async def power_off(
        self, view: NodeView, before_force_off: Callable[[], Awaitable[None]] | None = None
    ) -> FenceOutcome:
        """Power the node off and wait until its BMC confirms Off (at most `timeout`)."""
        try:
            target = await self.target(view)
        except NoBmcError as exc:
            return FenceOutcome(off=False, reason=HoldReason.NO_BMC, error=str(exc))
        except FencingError as exc:
            metrics.FENCING.labels(action="off", result="failed").inc()
            return FenceOutcome(off=False, reason=HoldReason.FENCING_FAILED, error=str(exc))
        try:
            wrong = await self.same_machine(view, target)
            if wrong:
                log.warning("BMC mismatch: no ForceOff", extra={"node": view.name, "bmc": target.system_url})
                outcome = FenceOutcome(off=False, reason=HoldReason.BMC_MISMATCH, error=wrong)
            elif await self.bmc.power_state(target) == OFF:
                outcome = FenceOutcome(off=True, found_off=True)
            else:
                started = self.clock.monotonic()
                if before_force_off is not None:  # e.g. record that this Off will be Asklepios' own
                    await before_force_off()
                await self.bmc.reset(target, "ForceOff")
                log.warning("ForceOff sent", extra={"node": view.name, "bmc": target.system_url})
                outcome = await self._wait_off(target, started)
                if outcome.off:
                    metrics.FENCING_SECONDS.observe(outcome.seconds)
        except FencingError as exc:
            outcome = FenceOutcome(off=False, reason=HoldReason.FENCING_FAILED, error=str(exc))
        metrics.FENCING.labels(action="off", result="ok" if outcome.off else "failed").inc()
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
        """Switch a fenced node on again (no-op when its BMC already says On); raises FencingError.

        The Secret is read again, so the same-machine check guards this too: a row
        changed since the power-off never switches on another machine.
        """
        try:
            target = await self.target(view)
            wrong = await self.same_machine(view, target)
            if not wrong and await self.bmc.power_state(target) != ON:
                await self.bmc.reset(target, "On")
        except FencingError:
            metrics.FENCING.labels(action="on", result="failed").inc()
            raise
        if wrong:
            metrics.FENCING.labels(action="on", result="failed").inc()
            raise FencingError(wrong)
        metrics.FENCING.labels(action="on", result="ok").inc()

    async def power_state(self, view: NodeView) -> str:
        """For `asklepios status`: the PowerState the BMC reports now; NoBmcError without `<node>.url`."""
        return await self.bmc.power_state(await self.target(view))
