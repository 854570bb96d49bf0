"""Exceptions of the core. Each carries what an API error needs as fields."""

from __future__ import annotations

from attrs import define

__all__ = [
    "ConfigError",
    "ConflictingRegistration",
    "InvalidInput",
    "NotFound",
    "Overloaded",
    "PluginLoadError",
    "PrmError",
    "StoreUnavailable",
    "TooLarge",
]


class PrmError(Exception):
    """Base of every error the core raises on purpose."""


class ConfigError(PrmError):
    """The configuration is unusable; the message says where and why."""


@define
class PluginLoadError(PrmError):
    """A plugin could not be imported or registered."""

    plugin: str
    distribution: str
    cause: str

    def __str__(self) -> str:
        return f"plugin {self.plugin!r} from distribution {self.distribution} failed to load: {self.cause}"


@define
class ConflictingRegistration(PrmError):
    """Two plugins registered the same name for the same kind of thing."""

    kind: str
    name: str
    first: str
    second: str

    def __str__(self) -> str:
        return (
            f"conflicting plugins found for {self.kind} {self.name!r}: "
            f"registered by {self.first} and by {self.second}; disable one with PRM_DISABLED_PLUGINS"
        )


@define
class InvalidInput(PrmError):
    """Input that parsed but is wrong (HTTP 422); ``field`` names the offending field."""

    message: str
    field: str | None = None
    code: str = "invalid"

    def __str__(self) -> str:
        return self.message


@define
class NotFound(PrmError):
    """The thing asked for does not exist (HTTP 404)."""

    message: str
    code: str = "not_found"

    def __str__(self) -> str:
        return self.message


@define
class TooLarge(PrmError):
    """A body or a batch over its limit (HTTP 413)."""

    message: str
    field: str | None = None
    code: str = "too_large"

    def __str__(self) -> str:
        return self.message


class Overloaded(PrmError):
    """The hub's queues are full (HTTP 503 with Retry-After); nothing was written."""


class StoreUnavailable(PrmError):
    """The database cannot take the write now (HTTP 503 with Retry-After); nothing was written."""
