"""fastgw: a drop-in OpenAI-compatible gateway for LLM traffic."""
__version__ = "0.1.0"
