"""The original Asklepios `config.yaml` (keys kickout, kickin, balancer, sleep).

Burrito installs ship this file; reading it lets them switch without rewriting
their settings. Its keys map onto the environment variables, which win over it.
"""

from __future__ import annotations

from pathlib import Path

import yaml

LEGACY_KEYS = {
    "kickout": "ASKLEPIOS_KICKOUT_SECONDS",
    "kickin": "ASKLEPIOS_KICKIN_SECONDS",
    "balancer": "ASKLEPIOS_BALANCER",
    "sleep": "ASKLEPIOS_RESYNC_SECONDS",  # the original's poll period
}


def read_legacy_file(path: str) -> dict[str, str]:
    """Return the file's settings as environment variables; ValueError-free: ConfigError."""
    from asklepios.config.settings import ConfigError  # noqa: PLC0415 - cycle: settings imports us

    where = f"ASKLEPIOS_CONFIG_FILE={path!r}"
    try:
        data = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigError(f"{where} is not allowed: expected a readable file ({exc.strerror})") from None
    except yaml.YAMLError as exc:
        line = str(exc).splitlines()[0]
        raise ConfigError(f"{where} is not allowed: expected YAML ({line})") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{where} is not allowed: expected a mapping of kickout, kickin, balancer, sleep")
    out: dict[str, str] = {}
    for key, value in data.items():
        if key not in LEGACY_KEYS:
            raise ConfigError(f"{where} is not allowed: unknown key {key!r}, expected {', '.join(LEGACY_KEYS)}")
        if isinstance(value, bool):
            out[LEGACY_KEYS[key]] = "true" if value else "false"
        else:
            out[LEGACY_KEYS[key]] = str(value)
    return out
