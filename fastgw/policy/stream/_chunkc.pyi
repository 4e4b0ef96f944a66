"""Types of the common chat chunk's C reader (fastgw/policy/stream/_chunkc.c)."""

def plain_choice(data: str) -> tuple[int, str | None, str | None, str | None, str | None, str | None] | None: ...

class PlainReader:
    """plain_choice for the chunks of one stream; a choice 0 of content alone as that str."""

    def read(self, data: str, /) -> tuple[int, str | None, str | None, str | None, str | None, str | None] | str | None:
        ...
