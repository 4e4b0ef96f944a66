"""The client APIs served through the chat core for targets that lack them: the OpenAI Responses API and Anthropic
Messages (`/v1/responses`, `/v1/messages`), translated to a chat completions request for the target's adapter,
and its answer translated back (a whole body, or a stream's events through `FrontSource`).

Targets that speak the API natively (openai/azure for Responses, anthropic for Messages) keep the pass-through;
`front_for` says which front, if any, an attempt uses.
"""

from __future__ import annotations

from fastgw.front.common import Front, StreamWriter
from fastgw.front.messages import MessagesFront
from fastgw.front.responses import ResponsesFront
from fastgw.front.source import FrontSource
from fastgw.providers.base import Endpoint
from fastgw.providers.registry import NATIVE_ENDPOINTS

__all__ = ["Front", "StreamWriter", "FrontSource", "front_for", "FRONTS"]

#: The client API endpoints a front serves, and its class.
FRONTS: dict[str, type[Front]] = {Endpoint.RESPONSES: ResponsesFront, Endpoint.MESSAGES: MessagesFront}


def front_for(endpoint: str, provider: str, body: dict) -> Front | None:
    """The front that serves `endpoint` on a `provider` target through chat completions (None: the endpoint is
    chat's own, or the provider speaks it natively)."""
    cls = FRONTS.get(endpoint)
    if cls is None or provider in NATIVE_ENDPOINTS.get(endpoint, ()):
        return None
    return cls(body)
