"""The shapes clients see: the OpenAI and Anthropic error envelopes, error origins, endpoint names.

Below `providers/` and `policy/`, above `proto/`: the API knowledge every layer
above the wire shares, and nothing that does I/O.
"""
