"""OpenAI and the OpenAI-compatible family (azure, groq, mistral, together, vllm): the request goes out as the
client sent it (model rewritten if aliased), the answer comes back as it is."""

from __future__ import annotations

from mypy_extensions import mypyc_attr

from fastgw.providers.base import TargetRuntime, Translator, UpstreamRequest, bearer, encode_json, json_post

__all__ = ["OpenAIAdapter", "AzureAdapter"]


@mypyc_attr(allow_interpreted_subclasses=True)  # the built-in mock's adapter (providers/mock.py) is one
class OpenAIAdapter:
    """Any OpenAI-compatible API. Vendor extras in chunks (e.g. `x_groq.usage`) pass through untouched."""

    def path(self, target: TargetRuntime, endpoint: str) -> str:
        return f"/{endpoint}"

    def auth(self, target: TargetRuntime) -> list[tuple[bytes, bytes]]:
        return bearer(target)

    def build_request(self, target: TargetRuntime, endpoint: str, body: dict, stream: bool) -> UpstreamRequest:
        """The body the policies judged, encoded once with the target's model name (never the client's bytes:
        with a duplicated key they could say something else to the upstream). The client's Authorization is
        never forwarded: the target's own key is used."""
        assert target.base_url is not None
        payload = encode_json(body if body.get("model") == target.model else {**body, "model": target.model}, body)
        return json_post(target, self.path(target, endpoint), payload, stream, self.auth(target))

    def stream_translator(self, target: TargetRuntime, body: dict) -> Translator | None:
        return None  # already OpenAI SSE: relayed byte for byte

    def is_stream(self, content_type: bytes) -> bool:
        return content_type.startswith(b"text/event-stream")

    def translate_response(self, target: TargetRuntime, body: dict, status: int, data: bytes) -> tuple[int, bytes]:
        return status, data


class AzureAdapter(OpenAIAdapter):
    """Azure OpenAI: `{base_url}/openai/deployments/{deployment}/{endpoint}?api-version=...`, key in `api-key`."""

    def path(self, target: TargetRuntime, endpoint: str) -> str:
        if endpoint == "responses":  # the Responses API is not per deployment
            return f"/openai/responses?api-version={target.api_version}"
        deployment = target.deployment or target.model
        return f"/openai/deployments/{deployment}/{endpoint}?api-version={target.api_version}"

    def auth(self, target: TargetRuntime) -> list[tuple[bytes, bytes]]:
        return [(b"api-key", target.api_key.encode())] if target.api_key else []
