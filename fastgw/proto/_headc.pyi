"""Types of the C response head (fastgw/proto/_headc.c)."""

def head(status: int, reason: bytes, headers: list[tuple[bytes, bytes]], extra: list[tuple[bytes, bytes]],
         framing: bytes, keep_alive: bool) -> bytes | None: ...
