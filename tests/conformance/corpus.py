"""A corpus of malformed and hostile HTTP/1.1 requests with the reaction RFC 9112 expects of the server.

Sources: RFC 9112 (§2.2 message parsing, §3 request line, §5 field syntax and obs-fold, §6.1 Transfer-Encoding,
§6.3 message body length, §7.1 chunked coding, §9.3 persistence), RFC 9110 (§2.5 versions, §10.1.1 Expect,
§15 status codes) and public request-smuggling research (Watchfire 2005 "HTTP Request Smuggling",
PortSwigger "HTTP Desync Attacks" 2019 and its CL.TE / TE.CL / TE.TE obfuscations, Node CVE-2024-22019
for unbounded chunk extensions).

Each case is sent raw over a fresh TCP connection to a server with these limits (see test_http_corpus.py):
max_header_bytes=4096, max_headers=20, max_body_bytes=1000, header_timeout=0.5 s.

Fields:
- name: short identifier (the pytest id)
- raw: the bytes to send, or a tuple of byte strings sent with `gap` seconds between them
- status: the expected status of the first final response
- closed: whether the server must close the connection after that response
- body: for accepted requests to /echo, the body the handler must have parsed (None: not checked)
- not_seen: a "METHOD /path" that the handler must never see (a follow-up that must not be processed)
- gap: seconds to wait between the parts of `raw`
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Case:
    name: str
    raw: bytes | tuple[bytes, ...]
    status: int
    closed: bool
    body: str | None = None
    not_seen: str | None = None
    gap: float = 0.0


_H = b"Host: x\r\n"
_POST = b"POST /echo HTTP/1.1\r\n" + _H
_GET = b"GET /echo HTTP/1.1\r\n" + _H
_TE = b"Transfer-Encoding: chunked\r\n"
_CHUNKED_ABC = b"3\r\nabc\r\n0\r\n\r\n"
# A follow-up request that a desynchronised parser would process as a second request.
_SMUGGLED = b"GET /smuggled HTTP/1.1\r\nHost: x\r\n\r\n"

CASES: list[Case] = [
    # ---- Content-Length + Transfer-Encoding (RFC 9112 §6.1, §6.3 item 3; CL.TE and TE.CL desync) ----
    Case("cl_then_te", _POST + b"Content-Length: 3\r\n" + _TE + b"\r\n0\r\n\r\n", 400, True),
    Case("te_then_cl", _POST + _TE + b"Content-Length: 3\r\n\r\n0\r\n\r\n", 400, True),
    Case("cl_te_smuggle_clte", _POST + b"Content-Length: 6\r\n" + _TE + b"\r\n0\r\n\r\nG" + _SMUGGLED, 400, True,
         not_seen="GET /smuggled"),
    Case("te_cl_smuggle_tecl",
         _POST + _TE + b"Content-Length: 4\r\n\r\n" + b"%x\r\n" % len(_SMUGGLED) + _SMUGGLED + b"\r\n0\r\n\r\n",
         400, True, not_seen="GET /smuggled"),
    Case("te_http10", b"POST /echo HTTP/1.0\r\n" + _TE + b"\r\n3\r\nabc\r\n0\r\n\r\n", 400, True),
    Case("te_http10_with_cl", b"POST /echo HTTP/1.0\r\nContent-Length: 3\r\n" + _TE + b"\r\nabc", 400, True),

    # ---- Content-Length syntax (RFC 9112 §6.3 item 5: 1*DIGIT; invalid or conflicting -> 400 + close) ----
    Case("cl_duplicate_conflicting", _POST + b"Content-Length: 3\r\nContent-Length: 4\r\n\r\nabcd", 400, True),
    Case("cl_duplicate_same", _POST + b"Content-Length: 3\r\nContent-Length: 3\r\n\r\nabc", 400, True),
    Case("cl_list_conflicting", _POST + b"Content-Length: 3, 4\r\n\r\nabcd", 400, True),
    Case("cl_plus_sign", _POST + b"Content-Length: +5\r\n\r\nhello", 400, True),
    Case("cl_negative", _POST + b"Content-Length: -1\r\n\r\n", 400, True),
    Case("cl_hex", _POST + b"Content-Length: 0x5\r\n\r\nhello", 400, True),
    Case("cl_overflow", _POST + b"Content-Length: 99999999999999999999\r\n\r\nhello", 400, True),
    Case("cl_inner_space", _POST + b"Content-Length: 1 0\r\n\r\n0123456789", 400, True),
    Case("cl_empty", _POST + b"Content-Length: \r\n\r\n", 400, True),
    Case("cl_leading_zeros_ok", _POST + b"Content-Length: 003\r\n\r\nabc", 200, False, body="abc"),
    Case("cl_trailing_ows_ok", _POST + b"Content-Length: 3 \r\n\r\nabc", 200, False, body="abc"),

    # ---- Transfer-Encoding codings (RFC 9112 §6.1, §6.3 item 4; RFC 9110 §15.6.2 501) ----
    Case("te_identity", _POST + b"Transfer-Encoding: identity\r\n\r\nabc", 400, True),
    Case("te_gzip_only", _POST + b"Transfer-Encoding: gzip\r\n\r\nabc", 400, True),
    Case("te_gzip_chunked", _POST + b"Transfer-Encoding: gzip, chunked\r\n\r\n" + _CHUNKED_ABC, 501, True),
    Case("te_gzip_chunked_two_headers",
         _POST + b"Transfer-Encoding: gzip\r\n" + _TE + b"\r\n" + _CHUNKED_ABC, 501, True),
    Case("te_chunked_identity", _POST + b"Transfer-Encoding: chunked, identity\r\n\r\n" + _CHUNKED_ABC, 400, True),
    Case("te_chunked_twice_one_header", _POST + b"Transfer-Encoding: chunked, chunked\r\n\r\n" + _CHUNKED_ABC,
         400, True),
    Case("te_repeated_header", _POST + _TE + _TE + b"\r\n" + _CHUNKED_ABC, 400, True),
    Case("te_xchunked", _POST + b"Transfer-Encoding: xchunked\r\n\r\n" + _CHUNKED_ABC, 400, True),
    Case("te_upper_case_ok", _POST + b"Transfer-Encoding: CHUNKED\r\n\r\n" + _CHUNKED_ABC, 200, False, body="abc"),
    Case("te_surrounding_ows_ok", _POST + b"Transfer-Encoding: \t chunked  \r\n\r\n" + _CHUNKED_ABC, 200, False,
         body="abc"),
    # RFC 9110 §5.6.1.2: a recipient MUST parse and ignore empty list elements.
    Case("te_leading_empty_list_element_ok", _POST + b"Transfer-Encoding: , chunked\r\n\r\n" + _CHUNKED_ABC, 200,
         False, body="abc"),
    # OWS around list elements is not part of them, and empty elements are ignored (RFC 9110 §5.5, §5.6.1):
    # "chunked<TAB>", "chunked, " and "chunked ," are "chunked". llhttp refuses them; the server parses the
    # head again with the value normalised, all strict checks included (see server._recover).
    Case("te_trailing_tab_ok", _POST + b"Transfer-Encoding: chunked\t\r\n\r\n" + _CHUNKED_ABC, 200, False,
         body="abc"),
    Case("te_trailing_empty_element_ok", _POST + b"Transfer-Encoding: chunked, \r\n\r\n" + _CHUNKED_ABC, 200, False,
         body="abc"),
    Case("te_trailing_comma_ok", _POST + b"Transfer-Encoding: chunked,\r\n\r\n" + _CHUNKED_ABC, 200, False,
         body="abc"),
    Case("te_space_before_comma_ok", _POST + b"Transfer-Encoding: chunked ,\r\nX: y\r\n\r\n" + _CHUNKED_ABC, 200,
         False, body="abc"),
    Case("te_many_empty_elements_ok", _POST + b"Transfer-Encoding: ,, chunked ,\t, \r\n\r\n" + _CHUNKED_ABC, 200,
         False, body="abc"),
    Case("te_trailing_comma_split_head",
         (_POST + b"Transfer-Encoding: chunked,", b" \r\nX-A: 1\r\n", b"\r\n" + _CHUNKED_ABC), 200, False,
         body="abc", gap=0.05),
    Case("te_trailing_comma_then_pipelined_ok",
         _POST + b"Transfer-Encoding: chunked, \r\n\r\n" + _CHUNKED_ABC + _POST + b"Content-Length: 1\r\n\r\nz",
         200, False, body="abc"),
    Case("te_trailing_comma_with_expect_ok",
         _POST + b"Transfer-Encoding: chunked\t\r\nExpect: 100-continue\r\n\r\n" + _CHUNKED_ABC, 200, False,
         body="abc"),
    # ... still with every smuggling defence: Content-Length beside it, chunked not final, HTTP/1.0, bad chunks.
    Case("te_trailing_comma_with_cl", _POST + b"Transfer-Encoding: chunked, \r\nContent-Length: 3\r\n\r\nabc",
         400, True),
    Case("te_trailing_tab_with_cl", _POST + b"Content-Length: 3\r\nTransfer-Encoding: chunked\t\r\n\r\nabc", 400,
         True),
    Case("te_trailing_comma_smuggle_clte",
         _POST + b"Content-Length: 6\r\nTransfer-Encoding: chunked, \r\n\r\n0\r\n\r\nG" + _SMUGGLED, 400, True,
         not_seen="GET /smuggled"),
    Case("te_chunked_comma_gzip", _POST + b"Transfer-Encoding: chunked, gzip\r\n\r\n" + _CHUNKED_ABC, 400, True),
    Case("te_chunked_tab_then_chunked", _POST + b"Transfer-Encoding: chunked\t, chunked\r\n\r\n" + _CHUNKED_ABC,
         400, True),
    Case("te_only_commas", _POST + b"Transfer-Encoding: , ,\r\n\r\n" + _CHUNKED_ABC, 400, True),
    Case("te_trailing_comma_http10", b"POST /echo HTTP/1.0\r\nTransfer-Encoding: chunked, \r\n\r\n" + _CHUNKED_ABC,
         400, True),
    Case("te_trailing_comma_bad_chunk", _POST + b"Transfer-Encoding: chunked, \r\n\r\nzz\r\n" + _SMUGGLED, 400, True,
         not_seen="GET /smuggled"),
    Case("te_trailing_vertical_tab", _POST + b"Transfer-Encoding: chunked\x0b\r\n\r\n" + _CHUNKED_ABC, 400, True),
    Case("te_empty_with_cl", _POST + b"Transfer-Encoding: \r\nContent-Length: 3\r\n\r\nabc", 400, True),
    Case("te_vertical_tab", _POST + b"Transfer-Encoding:\x0bchunked\r\n\r\n" + _CHUNKED_ABC, 400, True),
    Case("te_underscore_is_unknown_header", _POST + b"Transfer_Encoding: chunked\r\nContent-Length: 3\r\n\r\nabc",
         200, False, body="abc"),
    Case("te_space_before_colon", _POST + b"Transfer-Encoding : chunked\r\n\r\n" + _CHUNKED_ABC, 400, True),

    # ---- field syntax (RFC 9112 §5.1 no whitespace before colon, §5.2 obs-fold, §2.2 bare CR, RFC 9110 §5.5) ----
    Case("obs_fold", _GET + b"X: a\r\n b\r\n\r\n", 400, True),
    Case("obs_fold_on_te", _POST + b"Transfer-Encoding:\r\n chunked\r\n\r\n" + _CHUNKED_ABC, 400, True),
    Case("space_before_colon_host", b"GET /echo HTTP/1.1\r\nHost : x\r\n\r\n", 400, True),
    Case("space_before_colon_cl", _POST + b"Content-Length : 3\r\n\r\nabc", 400, True),
    Case("header_without_colon", _GET + b"NoColonHere\r\n\r\n", 400, True),
    Case("space_in_header_name", _GET + b"X Y: z\r\n\r\n", 400, True),
    Case("leading_whitespace_first_header", b"GET /echo HTTP/1.1\r\n Host: x\r\n\r\n", 400, True),
    Case("nul_in_header_value", _GET + b"X: a\x00b\r\n\r\n", 400, True),
    Case("nul_in_header_name", _GET + b"X\x00Y: b\r\n\r\n", 400, True),
    Case("bare_cr_in_header_value", _GET + b"X: a\rb\r\n\r\n", 400, True),
    Case("ctl_in_header_value", _GET + b"X: a\x01b\r\n\r\n", 400, True),
    Case("del_in_header_name", _GET + b"X\x7f: y\r\n\r\n", 400, True),
    Case("empty_header_name", _GET + b": y\r\n\r\n", 400, True),
    # RFC 9112 §2.2: a recipient MAY accept a bare LF as a line terminator; rejecting it is the safe choice.
    Case("bare_lf_line_endings", b"GET /echo HTTP/1.1\nHost: x\n\n", 400, True),
    Case("bare_lf_between_headers", b"GET /echo HTTP/1.1\r\nHost: x\nX: y\r\n\r\n", 400, True),
    # obs-text (0x80-0xFF) is allowed in field values (RFC 9110 §5.5); UTF-8 bytes of "café".
    Case("obs_text_in_value_ok", _GET + b"X: caf\xc3\xa9\r\n\r\n", 200, False),

    # ---- request line (RFC 9112 §3, §2.2) ----
    Case("bare_cr_in_request_line", b"GET /echo\rHTTP/1.1\r\nHost: x\r\n\r\n", 400, True),
    Case("nul_in_request_target", b"GET /ec\x00ho HTTP/1.1\r\nHost: x\r\n\r\n", 400, True),
    Case("space_in_request_target", b"GET /ec ho HTTP/1.1\r\nHost: x\r\n\r\n", 400, True),
    # RFC 9112 §3: recipients MAY parse the request line on whitespace boundaries (llhttp does, between method and
    # target); a trailing space before CRLF is outside the grammar and rejected.
    Case("double_space_request_line_ok", b"GET  /echo HTTP/1.1\r\nHost: x\r\n\r\n", 200, False),
    Case("trailing_space_request_line", b"GET /echo HTTP/1.1 \r\nHost: x\r\n\r\n", 400, True),
    Case("lf_in_request_target", b"GET /ec\nho HTTP/1.1\r\nHost: x\r\n\r\n", 400, True),
    Case("lower_case_version", b"GET /echo http/1.1\r\nHost: x\r\n\r\n", 400, True),
    Case("leading_empty_line_ok", b"\r\n" + _GET + b"\r\n", 200, False),
    Case("http09_request_line", b"GET /echo\r\n\r\n", 400, True),
    Case("http20_request_line", b"GET /echo HTTP/2.0\r\nHost: x\r\n\r\n", 505, True),
    Case("http2_without_minor", b"GET /echo HTTP/2\r\nHost: x\r\n\r\n", 400, True),
    # RFC 9110 §2.5 / §15.6.6: a major version other than 1 is refused with 505; a higher minor version of
    # HTTP/1 is processed as HTTP/1.1 (keep-alive by default, Host required) and answered as HTTP/1.1.
    Case("http30_request_line_505", b"GET /echo HTTP/3.0\r\nHost: x\r\n\r\n", 505, True),
    Case("http99_request_line_505", b"GET /echo HTTP/9.9\r\nHost: x\r\n\r\n", 505, True),
    Case("http00_request_line_505", b"GET /echo HTTP/0.0\r\nHost: x\r\n\r\n", 505, True),
    Case("http12_is_http11_ok", b"GET /echo HTTP/1.2\r\nHost: x\r\n\r\n", 200, False),
    Case("http19_is_http11_ok", b"POST /echo HTTP/1.9\r\nHost: x\r\n" + _TE + b"\r\n" + _CHUNKED_ABC, 200, False,
         body="abc"),
    Case("http12_requires_host", b"GET /echo HTTP/1.2\r\n\r\n", 400, True),
    Case("http12_close_honoured", b"GET /echo HTTP/1.2\r\nHost: x\r\nConnection: close\r\n\r\n" + _SMUGGLED, 200,
         True, not_seen="GET /smuggled"),
    Case("version_two_digit_minor", b"GET /echo HTTP/1.10\r\nHost: x\r\n\r\n", 400, True),
    Case("version_two_digit_major", b"GET /echo HTTP/11.1\r\nHost: x\r\n\r\n", 400, True),
    # (The HTTP/2 connection preface is answered with an HTTP/2 GOAWAY, not an HTTP/1.1 status: see
    # tests/fuzz/test_fuzz_request_path.py::test_h2_preface_gets_goaway_under_every_split.)

    # ---- methods (RFC 9110 §9.1: an unrecognised method token is 501; a non-token is a malformed line) ----
    Case("unknown_method_501", b"FOO /echo HTTP/1.1\r\nHost: x\r\n\r\n", 501, True),
    Case("unknown_method_prefix_of_known_501", b"PROPFX /echo HTTP/1.1\r\nHost: x\r\n\r\n", 501, True),
    Case("lower_case_method_501", b"get /echo HTTP/1.1\r\nHost: x\r\n\r\n", 501, True),
    Case("rtsp_method_501", b"DESCRIBE /echo HTTP/1.1\r\nHost: x\r\n\r\n", 501, True),
    Case("unknown_method_split_501", (b"FO", b"O /echo HTTP/1.1\r\nHost: x\r\n\r\n"), 501, True, gap=0.05),
    # The valid request before it is answered (200), then the 501, then the connection closes.
    Case("unknown_method_after_valid_request", _GET + b"\r\nFOO /echo HTTP/1.1\r\nHost: x\r\n\r\n" + _SMUGGLED,
         200, True, not_seen="GET /smuggled"),
    Case("unknown_method_pipelined_not_processed",
         b"FOO /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n" + _SMUGGLED, 501, True,
         not_seen="GET /smuggled"),
    Case("method_with_non_token_char", b"G@T /echo HTTP/1.1\r\nHost: x\r\n\r\n", 400, True),
    Case("method_nul", b"G\x00T /echo HTTP/1.1\r\nHost: x\r\n\r\n", 400, True),
    Case("tls_client_hello", b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + b"\x00" * 32, 400, True),
    Case("leading_space_before_method", b" GET /echo HTTP/1.1\r\nHost: x\r\n\r\n", 400, True),
    Case("method_too_long", b"X" * 100, 400, True),
    Case("missing_host_http11", b"GET /echo HTTP/1.1\r\n\r\n", 400, True),
    Case("duplicate_host", b"GET /echo HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n", 400, True),
    # RFC 9112 §3.2: more than one Host line, or an invalid Host value, is 400 in any request, HTTP/1.0 included.
    Case("duplicate_host_http10", b"GET /echo HTTP/1.0\r\nHost: a\r\nHost: b\r\n\r\n", 400, True),
    Case("host_with_space", b"GET /echo HTTP/1.1\r\nHost: a b\r\n\r\n", 400, True),
    Case("host_with_path", b"GET /echo HTTP/1.1\r\nHost: a/b\r\n\r\n", 400, True),
    Case("host_with_userinfo", b"GET /echo HTTP/1.1\r\nHost: u@a\r\n\r\n", 400, True),
    Case("host_http10_invalid", b"GET /echo HTTP/1.0\r\nHost: GET / HTTP/1.0\r\n\r\n", 400, True),
    Case("host_ipv6_port_ok", b"GET /echo HTTP/1.1\r\nHost: [::1]:8080\r\n\r\n", 200, False),
    Case("host_empty_ok", b"GET /echo HTTP/1.1\r\nHost: \r\n\r\n", 200, False),
    Case("http10_without_host_ok", b"GET /echo HTTP/1.0\r\n\r\n", 200, True),

    # ---- chunked coding (RFC 9112 §7.1: chunk-size = 1*HEXDIG) ----
    Case("chunk_size_zz", _POST + _TE + b"\r\nzz\r\nabc\r\n0\r\n\r\n", 400, True),
    Case("chunk_size_negative", _POST + _TE + b"\r\n-1\r\nabc\r\n0\r\n\r\n", 400, True),
    Case("chunk_size_0x_prefix", _POST + _TE + b"\r\n0x3\r\nabc\r\n0\r\n\r\n", 400, True),
    Case("chunk_size_overflow", _POST + _TE + b"\r\nffffffffffffffffffffff\r\nabc\r\n0\r\n\r\n", 400, True),
    Case("chunk_size_empty", _POST + _TE + b"\r\n\r\nabc\r\n0\r\n\r\n", 400, True),
    Case("chunk_data_longer_than_size", _POST + _TE + b"\r\n3\r\nabcd\r\n0\r\n\r\n", 400, True),
    Case("chunk_size_trailing_space", _POST + _TE + b"\r\n3 \r\nabc\r\n0\r\n\r\n", 400, True),
    Case("chunk_extension_without_name", _POST + _TE + b"\r\n3;\r\nabc\r\n0\r\n\r\n", 400, True),
    Case("chunk_size_bare_lf", _POST + _TE + b"\r\n3\nabc\r\n0\r\n\r\n", 400, True),
    Case("chunk_data_without_crlf", _POST + _TE + b"\r\n3\r\nabcXX0\r\n\r\n", 400, True),
    Case("chunk_extension_small_ok", _POST + _TE + b"\r\n3;name=value\r\nabc\r\n0;x=\"q\"\r\n\r\n", 200, False,
         body="abc"),
    Case("chunk_extension_over_4k", _POST + _TE + b"\r\n3;" + b"e" * 5000 + b"\r\nabc\r\n0\r\n\r\n", 400, True),
    Case("trailer_small_ok", _POST + _TE + b"\r\n3\r\nabc\r\n0\r\nX-Trailer: v\r\n\r\n", 200, False, body="abc"),
    Case("trailer_over_limit_431", _POST + _TE + b"\r\n3\r\nabc\r\n0\r\nX-T: " + b"a" * 5000 + b"\r\n\r\n",
         431, True),
    Case("invalid_chunk_then_pipelined", _POST + _TE + b"\r\nzz\r\n" + _SMUGGLED, 400, True,
         not_seen="GET /smuggled"),

    # ---- persistence (RFC 9112 §9.6: nothing after Connection: close is processed) ----
    # RFC 9110 §7.8: a server MAY ignore Upgrade; this one answers in HTTP/1.1 and closes.
    Case("upgrade_h2c_ignored", _GET + b"Connection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\n"
         b"HTTP2-Settings: AAMAAABkAAQCAAAAAAIAAAAA\r\n\r\n" + _SMUGGLED, 200, True, not_seen="GET /smuggled"),
    Case("request_after_connection_close", _GET + b"Connection: close\r\n\r\n" + _SMUGGLED, 200, True,
         not_seen="GET /smuggled"),

    # ---- limits (RFC 6585 §5 431, RFC 9110 §15.5.15 414, §15.5.14 413, §15.5.9 408, §15.5.18 417) ----
    Case("header_count_431", _GET + b"".join(b"X-%d: v\r\n" % i for i in range(25)) + b"\r\n", 431, True),
    Case("header_size_431", _GET + b"X-Big: " + b"a" * 5000 + b"\r\n\r\n", 431, True),
    Case("header_never_ends_431", (_GET + b"X-Big: ",) + (b"a" * 1000,) * 6, 431, True, gap=0.02),
    Case("url_too_long_414", b"GET /" + b"a" * 5000 + b" HTTP/1.1\r\nHost: x\r\n\r\n", 414, True),
    Case("body_too_large_cl_413", _POST + b"Content-Length: 1001\r\n\r\n" + b"a" * 1001, 413, True),
    Case("body_too_large_chunked_413",
         _POST + _TE + b"\r\n" + b"".join(b"64\r\n" + b"a" * 100 + b"\r\n" for _ in range(11)) + b"0\r\n\r\n",
         413, True),
    Case("slowloris_head_408", (_GET, b"X-A: 1\r\n"), 408, True, gap=0.2),
    Case("unknown_expect_417", _GET + b"Expect: something\r\n\r\n", 417, True),
]
