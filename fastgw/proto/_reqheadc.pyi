"""Types of the C request head reader (fastgw/proto/_reqheadc.c)."""

def read_head(data: bytes, start: int, max_bytes: int, max_headers: int
              ) -> tuple[str, bytes, list[tuple[bytes, bytes]], int] | None: ...
