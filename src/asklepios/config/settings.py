"""Settings from `ASKLEPIOS_*` environment variables, validated at start-up.

Names and defaults are the operator contract (README, CONTRACT.md). Every value
is parsed before the first API call; a bad one raises `ConfigError` whose
message is one line naming the variable, the value and what is allowed, which
the CLI prints before exiting with status 2.
"""

from __future__ import annotations

import difflib
import os
from collections.abc import Callable, Mapping
from datetime import timedelta
from typing import Any

import attrs
import environ

from asklepios.config import parse
from asklepios.config.legacy import read_legacy_file
from asklepios.core.evidence import PROBE_MARGIN, PROBE_TIMEOUT, VERDICT_LEAD
from asklepios.core.guard import MaxUnhealthy
from asklepios.core.judge import Timing
from asklepios.core.selector import LabelSelector

PREFIX = "ASKLEPIOS"
FENCING_MODES = ("off", "redfish")


class ConfigError(Exception):
    """A setting that cannot be used; str() is the one line to print."""


def _var(name: str, default: str, convert: Callable[[str], Any]) -> Any:
    env_name = f"{PREFIX}_{name}"

    def checked(raw: object) -> Any:
        if not isinstance(raw, str):  # the default, already a string, or a value given in code
            return raw
        try:
            return convert(raw)
        except ValueError as exc:
            raise ConfigError(f"{env_name}={raw!r} is not allowed: expected {exc}") from None

    return environ.var(default=default, converter=checked, name=env_name)


@environ.config(prefix=PREFIX, frozen=True)
class _Environment:
    kickout_seconds: int = _var("KICKOUT_SECONDS", "60", parse.integer(1))
    kickin_seconds: int = _var("KICKIN_SECONDS", "60", parse.integer(1))
    resync_seconds: int = _var("RESYNC_SECONDS", "10", parse.integer(1, 3600))
    node_selector: LabelSelector = _var("NODE_SELECTOR", "node-role.kubernetes.io/control-plane", parse.selector)
    max_unhealthy: MaxUnhealthy = _var("MAX_UNHEALTHY", "50%", parse.max_unhealthy)
    balancer: bool = _var("BALANCER", "false", parse.boolean)
    balancer_selector: LabelSelector = _var("BALANCER_SELECTOR", "asklepios.io/balance=true", parse.selector)
    balancer_namespaces: tuple[str, ...] = _var("BALANCER_NAMESPACES", "", parse.namespaces)
    dry_run: bool = _var("DRY_RUN", "false", parse.boolean)
    http_port: int = _var("HTTP_PORT", "8080", parse.integer(0, 65535))
    leader_election: bool = _var("LEADER_ELECTION", "true", parse.boolean)
    namespace: str = _var("NAMESPACE", "", parse.optional(parse.namespace))
    log_format: str = _var("LOG_FORMAT", "json", parse.word(parse.LOG_FORMATS))
    log_level: str = _var("LOG_LEVEL", "info", parse.word(parse.LOG_LEVELS))
    lease_duration_seconds: int = _var("LEASE_DURATION_SECONDS", "15", parse.integer(2, 300))
    lease_renew_seconds: int = _var("LEASE_RENEW_SECONDS", "10", parse.integer(1, 300))
    lease_retry_seconds: int = _var("LEASE_RETRY_SECONDS", "2", parse.integer(1, 60))
    watch_timeout_seconds: int = _var("WATCH_TIMEOUT_SECONDS", "290", parse.integer(5, 3600))
    config_file: str = _var("CONFIG_FILE", "", parse.text)
    liveness_probe_ports: tuple[int, ...] = _var("LIVENESS_PROBE_PORTS", "10250", parse.ports)
    fencing: str = _var("FENCING", "off", parse.word(FENCING_MODES))
    fencing_secret: str = _var("FENCING_SECRET", "asklepios-bmc", parse.object_name)
    fencing_timeout_seconds: int = _var("FENCING_TIMEOUT_SECONDS", "60", parse.integer(1, 3600))
    fencing_power_on: bool = _var("FENCING_POWER_ON", "true", parse.boolean)
    fencing_insecure: bool = _var("FENCING_INSECURE", "false", parse.boolean)
    kickin_pod_wait_seconds: int = _var("KICKIN_POD_WAIT_SECONDS", "300", parse.integer(0))
    balancer_max_moves_per_hour: int = _var("BALANCER_MAX_MOVES_PER_HOUR", "6", parse.integer(1, 3600))
    force_delete: bool = _var("FORCE_DELETE", "true", parse.boolean)
    flap_max_kickouts: int = _var("FLAP_MAX_KICKOUTS", "3", parse.integer(1, 1000))
    flap_window_seconds: int = _var("FLAP_WINDOW_SECONDS", "3600", parse.integer(60, 30 * 86400))


@attrs.frozen
class Settings:
    kickout_seconds: int = 60
    kickin_seconds: int = 60
    resync_seconds: int = 10
    node_selector: LabelSelector = parse.selector("node-role.kubernetes.io/control-plane")
    max_unhealthy: MaxUnhealthy = MaxUnhealthy(50, percent=True)
    balancer: bool = False
    balancer_selector: LabelSelector = parse.selector("asklepios.io/balance=true")
    balancer_namespaces: tuple[str, ...] = ()
    dry_run: bool = False
    http_port: int = 8080
    leader_election: bool = True
    namespace: str = "kube-system"
    log_format: str = "json"
    log_level: str = "info"
    lease_duration_seconds: int = 15
    lease_renew_seconds: int = 10
    lease_retry_seconds: int = 2
    watch_timeout_seconds: int = 290
    config_file: str = ""
    liveness_probe_ports: tuple[int, ...] = (10250,)
    fencing: str = "off"
    fencing_secret: str = "asklepios-bmc"  # noqa: S105 - the Secret's name, not a password
    fencing_timeout_seconds: int = 60
    fencing_power_on: bool = True
    fencing_insecure: bool = False
    kickin_pod_wait_seconds: int = 300
    balancer_max_moves_per_hour: int = 6
    force_delete: bool = True
    flap_max_kickouts: int = 3
    flap_window_seconds: int = 3600

    @property
    def fencing_on(self) -> bool:
        return self.fencing == "redfish"

    @property
    def timing(self) -> Timing:
        return Timing(
            kickout=timedelta(seconds=self.kickout_seconds),
            kickin=timedelta(seconds=self.kickin_seconds),
            pod_wait=timedelta(seconds=self.kickin_pod_wait_seconds),
            probe_lead=timedelta(seconds=PROBE_TIMEOUT + PROBE_MARGIN if self.liveness_probe_ports else VERDICT_LEAD),
        )


# ASKLEPIOS_* variables that are not settings of the process but are read by the
# repository's own scripts (the lab, the benchmarks, hack/): known, never warned about.
TOOL_VARIABLES = frozenset(
    {"ASKLEPIOS_BIN_DIR", "ASKLEPIOS_REPO", "ASKLEPIOS_BENCH_LOCK", "ASKLEPIOS_BENCH_MEMORY_BASELINE"}
)
# Settings of the operator contract that a build may not read yet: known, so never "unknown".
CONTRACT_VARIABLES = frozenset({"ASKLEPIOS_FLAP_MAX_KICKOUTS", "ASKLEPIOS_FLAP_WINDOW_SECONDS"})


def variables() -> tuple[tuple[str, str], ...]:
    """Every setting's variable and default, in the order of the settings (for `--help`)."""
    out = []
    for field in attrs.fields(_Environment):  # type: ignore[arg-type]
        var = field.metadata[environ._environ_config.CNF_KEY]
        out.append((str(var.name), str(var.default)))
    return tuple(out)


def unknown_variables(env: Mapping[str, str] | None = None) -> list[str]:
    """One warning per `ASKLEPIOS_*` variable that nothing reads, naming the closest known one.

    A typo (ASKLEPIOS_KICKOUT_SECOND=5) would otherwise be silently ignored. A warning,
    never an error: an unknown variable cannot make a setting wrong, only leave it default.
    """
    source = os.environ if env is None else env
    settings = [name for name, _ in variables()] + sorted(CONTRACT_VARIABLES)
    known = set(settings) | TOOL_VARIABLES
    warnings = []
    for name in sorted(source):
        if not name.startswith(f"{PREFIX}_") or name in known:
            continue
        # compared without the prefix, which every name shares
        close = difflib.get_close_matches(name.removeprefix(f"{PREFIX}_"), [n[len(PREFIX) + 1 :] for n in settings], 1)
        hint = (
            f"; did you mean {PREFIX}_{close[0]}?"
            if close
            else f"; see `asklepios run --help` for the {PREFIX}_* variables"
        )
        warnings.append(f"{name} is not an Asklepios setting and is ignored{hint}")
    return warnings


def load_settings(env: Mapping[str, str] | None = None) -> Settings:
    """Read and validate every setting; raise ConfigError on the first bad one."""
    source = dict(os.environ if env is None else env)
    config_file = source.get(f"{PREFIX}_CONFIG_FILE", "")
    merged = {**read_legacy_file(config_file), **source} if config_file else source
    try:
        raw = environ.to_config(_Environment, environ=merged)
    except ConfigError:
        raise
    except environ.exceptions.MissingEnvValueError as exc:  # pragma: no cover - all have defaults
        raise ConfigError(f"missing setting {exc}") from None
    values = {f.name: getattr(raw, f.name) for f in attrs.fields(_Environment)}  # type: ignore[arg-type]
    if not values["namespace"]:
        fallback = source.get("POD_NAMESPACE", "") or "kube-system"
        try:
            values["namespace"] = parse.namespace(fallback)
        except ValueError as exc:
            raise ConfigError(f"POD_NAMESPACE={fallback!r} is not allowed: expected {exc}") from None
    settings = Settings(**values)
    if settings.lease_renew_seconds >= settings.lease_duration_seconds:
        raise ConfigError(
            f"{PREFIX}_LEASE_RENEW_SECONDS={str(settings.lease_renew_seconds)!r} is not allowed: "
            f"expected less than {PREFIX}_LEASE_DURATION_SECONDS ({settings.lease_duration_seconds})"
        )
    if settings.lease_retry_seconds >= settings.lease_renew_seconds:
        raise ConfigError(
            f"{PREFIX}_LEASE_RETRY_SECONDS={str(settings.lease_retry_seconds)!r} is not allowed: "
            f"expected less than {PREFIX}_LEASE_RENEW_SECONDS ({settings.lease_renew_seconds})"
        )
    return settings
