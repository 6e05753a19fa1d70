"""The LLM gateway: the one way stages talk to teacher and judge models."""

from tunefold.llm.gateway import (
    GATEWAY_VERSION,
    ChatRequest,
    ChatResult,
    EndpointDown,
    EndpointRejected,
    Gateway,
)
from tunefold.llm.parsing import Parsed, parse_model, parse_rating, parse_verdict

__all__ = [
    "GATEWAY_VERSION",
    "ChatRequest",
    "ChatResult",
    "EndpointDown",
    "EndpointRejected",
    "Gateway",
    "Parsed",
    "parse_model",
    "parse_rating",
    "parse_verdict",
]
