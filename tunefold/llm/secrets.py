"""API keys: only from the environment or a Prefect Secret block, never from params.yaml, never logged."""

from __future__ import annotations

import logging
import os
from urllib.parse import urlparse

from tunefold.config import EndpointConfig
from tunefold.errors import TunefoldError

log = logging.getLogger(__name__)
NO_KEY = "no-key-set"


def resolve_api_key(cfg: EndpointConfig, base_url: str) -> str:
    if cfg.api_key_secret:
        from prefect.blocks.system import Secret

        try:
            return str(Secret.load(cfg.api_key_secret).get())
        except ValueError as e:
            raise TunefoldError(f"Prefect Secret block {cfg.api_key_secret!r} not found: {e}") from None
    key = os.environ.get(cfg.api_key_env)
    if key:
        return key
    host = urlparse(base_url).hostname or ""
    if host not in ("127.0.0.1", "localhost", "::1"):
        log.warning("no API key: $%s is not set (fine for servers without auth)", cfg.api_key_env)
    return NO_KEY
