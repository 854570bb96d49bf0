"""What the aiohttp application keeps, each under a typed ``web.AppKey``."""

from __future__ import annotations

from aiohttp import web

from ..config import Config
from ..hub import Hub
from ..keys import ApiKey, KeyRing
from .metrics import HubMetrics

__all__ = ["API_KEY", "HUB", "HUB_CONFIG", "HUB_KEYS", "HUB_METRICS"]

HUB = web.AppKey("prm_hub", Hub)
HUB_CONFIG = web.AppKey("prm_config", Config)
HUB_KEYS = web.AppKey("prm_keys", KeyRing)
HUB_METRICS = web.AppKey("prm_metrics", HubMetrics)

# the verified key of the current request
API_KEY = web.RequestKey("prm_api_key", ApiKey)
