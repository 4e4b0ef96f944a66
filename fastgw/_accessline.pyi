"""The access log's common line in C (see _accessline.c's head comment)."""

def line(known: dict[str, bytes], principal: str | None, client: str | None, method: str, route: str, model: str | None,
         target: str | None, stream: bool, request_id: str, status: int, first_byte: float | None, started: float,
         end: float | None, wall: float | None, nbytes: int | None, usage: dict | None,
         policy: dict[str, str] | None, retries: int, error: str | None) -> bytes | None: ...
