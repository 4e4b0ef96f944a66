"""The rbac policy and key helpers, without sockets: hashing, validation, key extraction, globs, roles, 401/403."""

from __future__ import annotations

import io
import pickle
import string

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fastgw.config import Rbac, RbacKey, RbacRole
from fastgw.keys import hash_key, main_hash, main_new, new_key
from fastgw.policy.base import AuthError, Forbidden, RequestContext
from fastgw.policy.rbac import INVALID_KEY_MESSAGE, MISSING_KEY_MESSAGE, RbacConfigError, RbacPolicy

TEST_KEY = "test-key"
TEST_DIGEST = "62af8704764faf8ea82fc61ce9c4c3908b6cb97d463a634e9e587d7c885db0ef"  # printf test-key | sha256sum
CHAT = "/v1/chat/completions"


def ctx(*headers: tuple[bytes, bytes], path: str = CHAT) -> RequestContext:
    return RequestContext("rid", "POST", path, list(headers))


def bearer(key: str | bytes) -> tuple[bytes, bytes]:
    return (b"authorization", b"Bearer " + (key.encode() if isinstance(key, str) else key))


def policy(keys: list[RbacKey] | None = None, **roles: RbacRole) -> RbacPolicy:
    return RbacPolicy(Rbac(keys=keys if keys is not None else [RbacKey(name="team-a", sha256=TEST_DIGEST,
                                                                       roles=list(roles))],
                           roles=roles))


def authed(pol: RbacPolicy, key: str = TEST_KEY, path: str = CHAT) -> RequestContext:
    c = ctx(bearer(key), path=path)
    pol.authenticate(c)
    return c


# ---- keys -------------------------------------------------------------------------------

def test_hash_key_known_vector() -> None:
    assert hash_key(TEST_KEY) == TEST_DIGEST
    assert hash_key(f"  {TEST_KEY}\n") == TEST_DIGEST
    assert hash_key(f"{TEST_KEY}\r\n") == TEST_DIGEST


@pytest.mark.parametrize("key", ["", " ", "\n", " \t\r\n"])
def test_hash_key_empty(key: str) -> None:
    with pytest.raises(ValueError, match="empty"):
        hash_key(key)


def test_new_keys_unique_and_hash_matches() -> None:
    made = [new_key() for _ in range(200)]
    assert len({k for k, _ in made}) == len(made)
    for key, digest in made:
        assert key.startswith("fgw-")
        assert len(key) == 4 + 43  # 32 bytes, URL-safe base64 without padding
        assert digest == hash_key(key)
    key, digest = new_key(prefix="x_")
    assert key.startswith("x_") and digest == hash_key(key)


def test_main_new_prints_key_and_digest() -> None:
    out = io.StringIO()
    assert main_new(out) == 0
    lines = out.getvalue().splitlines()
    assert [ln.split(": ")[0] for ln in lines] == ["key", "sha256"]
    key, digest = (ln.split(": ", 1)[1] for ln in lines)
    assert hash_key(key) == digest


def test_main_hash_prints_only_digest() -> None:
    out, err = io.StringIO(), io.StringIO()
    assert main_hash(io.StringIO(TEST_KEY + "\n"), out, err) == 0
    assert out.getvalue() == TEST_DIGEST + "\n" and err.getvalue() == ""


@pytest.mark.parametrize("stdin", ["", "\n  \n", "a\nb\n"])
def test_main_hash_refuses_no_or_many_keys(stdin: str) -> None:
    out, err = io.StringIO(), io.StringIO()
    assert main_hash(io.StringIO(stdin), out, err) == 2
    assert out.getvalue() == "" and err.getvalue().startswith("fastgw keys hash: ")


# ---- validation -------------------------------------------------------------------------

def test_upper_case_digest_accepted_and_normalised() -> None:
    pol = policy([RbacKey(name="team-a", sha256=TEST_DIGEST.upper(), roles=["r"])], r=RbacRole())
    assert authed(pol).principal == "team-a"


@pytest.mark.parametrize("bad", [TEST_DIGEST[:-1], TEST_DIGEST + "0", TEST_DIGEST[:-1] + "g", "", TEST_KEY,
                                 " " + TEST_DIGEST[1:], "é" * 64])
def test_bad_digest_names_the_key_and_hides_the_value(bad: str) -> None:
    keys = [RbacKey(name="ok", sha256="0" * 64), RbacKey(name="team-b", sha256=bad)]
    with pytest.raises(ValueError) as ei:
        RbacPolicy(Rbac(keys=keys))
    msg = str(ei.value)
    assert msg.startswith("keys[1].sha256: ") and "'team-b'" in msg and "64 hex" in msg
    assert isinstance(ei.value, RbacConfigError) and ei.value.path == "keys[1].sha256"
    if len(bad) > 2:
        assert bad not in msg  # a key pasted by mistake must not reach the logs


def test_duplicate_name() -> None:
    keys = [RbacKey(name="a", sha256="0" * 64), RbacKey(name="b", sha256="1" * 64),
            RbacKey(name="a", sha256="2" * 64)]
    with pytest.raises(ValueError, match=r"^keys\[2\]\.name: duplicate key name 'a' \(first at keys\[0\]\)"):
        RbacPolicy(Rbac(keys=keys))


def test_duplicate_digest_even_in_other_case() -> None:
    keys = [RbacKey(name="a", sha256="ab" * 32), RbacKey(name="b", sha256="AB" * 32)]
    with pytest.raises(ValueError, match=r"^keys\[1\]\.sha256: key 'b' has the same sha256 as keys\[0\] \('a'\)"):
        RbacPolicy(Rbac(keys=keys))


def test_unknown_role() -> None:
    keys = [RbacKey(name="a", sha256="0" * 64, roles=["user"]), RbacKey(name="b", sha256="1" * 64,
                                                                        roles=["user", "admin"])]
    with pytest.raises(ValueError, match=r"^keys\[1\]\.roles\[1\]: key 'b': unknown role 'admin' \(roles: user\)"):
        RbacPolicy(Rbac(keys=keys, roles={"user": RbacRole()}))


def test_endpoint_glob_must_be_a_path() -> None:
    with pytest.raises(ValueError, match=r"^roles\.r\.endpoints\[1\]: expected a path starting with '/'"):
        RbacPolicy(Rbac(roles={"r": RbacRole(endpoints=["/v1/*", "chat/completions"])}))
    RbacPolicy(Rbac(roles={"r": RbacRole(endpoints=["*", "?v1/x", "[/]v1/*", "/v1/models"])}))


def test_policy_is_plain_data() -> None:
    pol = policy(r=RbacRole(models=["gpt-4o*"], endpoints=["/v1/*"]))
    again = pickle.loads(pickle.dumps(pol))
    assert authed(again).principal == "team-a"
    again.authorize(authed(again), CHAT, "gpt-4o-mini", True)


# ---- authentication ---------------------------------------------------------------------

@pytest.mark.parametrize("header", [
    (b"authorization", b"Bearer test-key"),
    (b"authorization", b"bearer test-key"),
    (b"authorization", b"BEARER test-key"),
    (b"authorization", b"BeArEr    test-key"),
    (b"authorization", b"Bearer \t test-key  "),
    (b"api-key", b"test-key"),
    (b"api-key", b" test-key "),
])
def test_key_extraction(header: tuple[bytes, bytes]) -> None:
    pol = policy(r=RbacRole(), s=RbacRole())
    c = ctx((b"content-type", b"application/json"), header)
    pol.authenticate(c)
    assert c.principal == "team-a" and c.roles == ("r", "s")


def test_bearer_wins_over_api_key() -> None:
    pol = policy(r=RbacRole())
    c = ctx((b"api-key", b"other"), bearer(TEST_KEY))
    pol.authenticate(c)
    assert c.principal == "team-a"
    with pytest.raises(AuthError, match=INVALID_KEY_MESSAGE):
        pol.authenticate(ctx((b"api-key", TEST_KEY.encode()), bearer("other")))


def test_api_key_used_when_authorization_is_not_bearer() -> None:
    pol = policy(r=RbacRole())
    c = ctx((b"authorization", b"Basic dXNlcjpwYXNz"), (b"api-key", TEST_KEY.encode()))
    pol.authenticate(c)
    assert c.principal == "team-a"


@pytest.mark.parametrize("headers", [(), ((b"authorization", b"Bearer"),), ((b"authorization", b"Bearer   "),),
                                     ((b"api-key", b""),), ((b"x-api-key", b"test-key"),)])
def test_missing_key_401(headers: tuple[tuple[bytes, bytes], ...]) -> None:
    c = ctx(*headers)
    with pytest.raises(AuthError) as ei:
        policy(r=RbacRole()).authenticate(c)
    assert ei.value.status == 401 and ei.value.message == MISSING_KEY_MESSAGE
    assert ei.value.code == "invalid_api_key"
    assert c.principal is None and c.roles == ()


@pytest.mark.parametrize("header", [bearer("nope-secret-value"), bearer(TEST_KEY + "x"), bearer(TEST_DIGEST),
                                    (b"api-key", b"nope-secret-value"), (b"authorization", b"Bearertest-key"),
                                    (b"authorization", b"Basic nope-secret-value"), bearer(b"\xff\xfe")])
def test_unknown_key_401_without_echo(header: tuple[bytes, bytes]) -> None:
    c = ctx(header)
    with pytest.raises(AuthError) as ei:
        policy(r=RbacRole()).authenticate(c)
    err = ei.value
    assert err.status == 401 and err.message == INVALID_KEY_MESSAGE
    assert b"secret" not in err.body() and b"test-key" not in err.body()
    assert c.principal is None


# ---- authorization ----------------------------------------------------------------------

def refused(pol: RbacPolicy, c: RequestContext, path: str, model: str | None, stream: bool) -> Forbidden:
    with pytest.raises(Forbidden) as ei:
        pol.authorize(c, path, model, stream)
    assert ei.value.status == 403
    return ei.value


def test_model_globs() -> None:
    pol = policy(r=RbacRole(models=["gpt-4o*", "o3"]))
    c = authed(pol)
    for m in ("gpt-4o", "gpt-4o-mini", "gpt-4o-2024-08-06", "o3"):
        pol.authorize(c, CHAT, m, False)
    for m in ("gpt-4.1", "GPT-4o", "o3-mini", "xgpt-4o", "gpt-4"):
        err = refused(pol, c, CHAT, m, False)
        assert err.code == "model_not_allowed" and err.message == f"key 'team-a' may not use model {m!r}"


def test_model_check_skipped_without_model() -> None:
    pol = policy(r=RbacRole(models=[], endpoints=["/v1/models"]))
    c = authed(pol)
    pol.authorize(c, "/v1/models", None, False)
    assert refused(pol, c, "/v1/models", "gpt-4o", False).code == "model_not_allowed"


def test_endpoint_globs() -> None:
    pol = policy(r=RbacRole(endpoints=["/v1/chat/completions", "/v1/embed*"]))
    c = authed(pol)
    pol.authorize(c, CHAT, "m", False)
    pol.authorize(c, "/v1/embeddings", "m", False)
    for path in ("/v1/completions", "/v1/chat/completions/x", "/V1/chat/completions", "/v1/models"):
        err = refused(pol, c, path, "m", False)
        assert err.code == "endpoint_not_allowed" and err.message == f"key 'team-a' may not use endpoint {path!r}"
    wide = policy(r=RbacRole(endpoints=["/v1/*"]))
    wide.authorize(authed(wide), "/v1/chat/completions", "m", False)


def test_stream_flag() -> None:
    pol = policy(r=RbacRole(stream=False))
    c = authed(pol)
    pol.authorize(c, CHAT, "gpt-4o", False)
    err = refused(pol, c, CHAT, "gpt-4o", True)
    assert err.code == "stream_not_allowed" and "key 'team-a' may not stream" in err.message
    policy(r=RbacRole()).authorize(c, CHAT, "gpt-4o", True)  # stream defaults to true


def test_any_role_suffices() -> None:
    pol = policy(small=RbacRole(models=["gpt-4o-mini"]), batch=RbacRole(models=["gpt-4o"], stream=False))
    c = authed(pol)
    assert c.roles == ("small", "batch")
    pol.authorize(c, CHAT, "gpt-4o-mini", True)
    pol.authorize(c, CHAT, "gpt-4o", False)
    # Only "batch" allows gpt-4o, and not streamed: the stream refusal is the most specific.
    assert refused(pol, c, CHAT, "gpt-4o", True).code == "stream_not_allowed"


def test_most_specific_code() -> None:
    pol = policy(emb=RbacRole(endpoints=["/v1/embeddings"]), chat=RbacRole(endpoints=[CHAT], models=["a"]))
    c = authed(pol)
    # emb refuses the endpoint, chat the model: the model is what the caller must change.
    assert refused(pol, c, CHAT, "b", False).code == "model_not_allowed"
    assert refused(pol, c, "/v1/completions", "a", False).code == "endpoint_not_allowed"


def test_no_roles_and_no_principal_refused() -> None:
    pol = policy([RbacKey(name="idle", sha256=TEST_DIGEST)], r=RbacRole())
    c = authed(pol)
    assert c.principal == "idle" and c.roles == ()
    err = refused(pol, c, CHAT, "m", False)
    assert err.code == "endpoint_not_allowed" and "'idle' has no roles" in err.message
    assert pol.visible_models(c, ["m"]) == []
    anon = ctx()
    assert refused(pol, anon, CHAT, "m", False).code == "endpoint_not_allowed"
    assert pol.visible_models(anon, ["m"]) == []


def test_visible_models() -> None:
    pol = policy(a=RbacRole(models=["gpt-4o*"]), b=RbacRole(models=["o3", "text-embedding-?-small"]))
    c = authed(pol)
    models = ["gpt-4.1", "gpt-4o", "o3", "gpt-4o-mini", "o3-mini", "text-embedding-3-small"]
    assert pol.visible_models(c, models) == ["gpt-4o", "o3", "gpt-4o-mini", "text-embedding-3-small"]
    everything = policy(r=RbacRole())
    assert everything.visible_models(authed(everything), models) == models


# ---- property: a key authenticates, any one-character change does not ---------------------

_KEY_CHARS = string.ascii_letters + string.digits + "-_.~+/="


@settings(max_examples=200, deadline=None)
@given(key=st.text(_KEY_CHARS, min_size=1, max_size=80), data=st.data())
def test_any_key_authenticates_and_one_change_fails(key: str, data: st.DataObject) -> None:
    pol = RbacPolicy(Rbac(keys=[RbacKey(name="k", sha256=hash_key(key), roles=["r"])], roles={"r": RbacRole()}))
    use_api_key = data.draw(st.booleans())
    header = (b"api-key", key.encode()) if use_api_key else bearer(key)
    c = ctx(header)
    pol.authenticate(c)
    assert c.principal == "k" and c.roles == ("r",)

    i = data.draw(st.integers(0, len(key) - 1))
    ch = data.draw(st.sampled_from(_KEY_CHARS).filter(lambda x: x != key[i]))
    other = key[:i] + ch + key[i + 1:]
    c2 = ctx((b"api-key", other.encode()) if use_api_key else bearer(other))
    with pytest.raises(AuthError) as ei:
        pol.authenticate(c2)
    assert ei.value.message == INVALID_KEY_MESSAGE and c2.principal is None


@settings(max_examples=50, deadline=None)
@given(st.integers(0, 2**31))
def test_new_key_roundtrip(_: int) -> None:
    key, digest = new_key()
    pol = RbacPolicy(Rbac(keys=[RbacKey(name="k", sha256=digest.upper())]))
    c = ctx(bearer(key))
    pol.authenticate(c)
    assert c.principal == "k"
