"""Settings: the environment (and the original config.yaml), validated before anything runs."""

from asklepios.config.settings import ConfigError, Settings, load_settings

__all__ = ["ConfigError", "Settings", "load_settings"]
