"""Settings per environment, read from the environment (12-factor)."""

from config.settings import ConfigError, load_settings

__all__ = ["ConfigError", "load_settings"]
