"""hubbub.server.auth.Tokens: the claims it remembers of the tokens it issued
or verified, and what is still checked at every use (``exp``, ``iat``, the
exact string); and pyjwt's HMAC key check, done once per accepted secret."""

from __future__ import annotations

import time

import jwt
import pytest

from hubbub.server import auth
from hubbub.server.auth import InvalidToken, Tokens

SECRET = "unit-test-secret-that-is-long-enough-for-hs256-0123456789"
TTL = 3600


def make() -> Tokens:
    return Tokens(SECRET, "hubbub", "hubbub", TTL)


def test_an_issued_token_verifies_without_being_decoded_again() -> None:
    tokens = make()
    token, _ = tokens.issue(7, generation=3)
    assert tokens.verify_session(token) == (7, 3)
    assert tokens.verify_session(token) == (7, 3)
    assert tokens.cache_hits == 2


def test_a_verified_token_is_remembered() -> None:
    issuer, verifier = make(), make()  # another instance: what a restarted server sees
    token, _ = issuer.issue(9, generation=1)
    assert verifier.verify_session(token) == (9, 1)
    assert verifier.cache_hits == 0
    assert verifier.verify_session(token) == (9, 1)
    assert verifier.cache_hits == 1


def test_a_remembered_token_past_its_expiry_is_refused() -> None:
    tokens = make()
    token, expires_ms = tokens.issue(7, now=time.time() - TTL - 5)
    assert expires_ms / 1000 < time.time()
    with pytest.raises(InvalidToken, match="expired"):
        tokens.verify_session(token)
    with pytest.raises(InvalidToken, match="expired"):  # and again: it is not remembered as valid
        tokens.verify_session(token)
    assert tokens.cache_hits == 0


def test_a_remembered_token_issued_in_the_future_is_refused() -> None:
    tokens = make()
    token, _ = tokens.issue(7, now=time.time() + 120)
    with pytest.raises(InvalidToken, match="not yet valid"):
        tokens.verify_session(token)
    assert tokens.cache_hits == 0


def test_a_token_that_differs_in_one_byte_is_verified_in_full() -> None:
    tokens = make()
    token, _ = tokens.issue(7)
    tokens.verify_session(token)
    last = "A" if token[-1] != "A" else "B"
    with pytest.raises(InvalidToken):
        tokens.verify_session(token[:-1] + last)


def test_the_generation_is_returned_from_memory_as_signed() -> None:
    """auth compares it with the user's row at every use: a remembered token of
    an ended generation is refused there (tests/test_profiles.py)."""
    tokens = make()
    old, _ = tokens.issue(5, generation=0)
    new, _ = tokens.issue(5, generation=1)
    assert tokens.verify_session(old) == (5, 0)
    assert tokens.verify_session(new) == (5, 1)


def test_tokens_with_not_before_are_not_remembered() -> None:
    tokens = make()
    now = int(time.time())
    claims = {"sub": "4", "iat": now, "nbf": now, "exp": now + 60, "iss": "hubbub", "aud": "hubbub"}
    token = jwt.encode(claims, SECRET, algorithm="HS256")
    assert tokens.verify_session(token) == (4, 0)
    assert tokens.verify_session(token) == (4, 0)
    assert tokens.cache_hits == 0


def test_at_most_token_cache_size_are_remembered_the_oldest_first_out(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(auth, "TOKEN_CACHE_SIZE", 3)
    tokens = make()
    issued = [tokens.issue(i)[0] for i in range(4)]
    assert tokens.verify_session(issued[0]) == (0, 0)  # forgotten: decoded in full, still valid
    assert tokens.cache_hits == 0
    assert tokens.verify_session(issued[3]) == (3, 0)
    assert tokens.cache_hits == 1


def test_an_asymmetric_key_is_refused_as_hmac_secret_at_every_call() -> None:
    pem = "-----BEGIN PUBLIC KEY-----\nMFkwEwYHKoZIzj0CAQYIKoZIzj0DAQcDQgAE\n-----END PUBLIC KEY-----\n"
    for _ in range(2):
        with pytest.raises(jwt.InvalidKeyError):
            jwt.encode({"sub": "1"}, pem, algorithm="HS256")


def test_hs256_is_still_pyjwts_for_every_caller() -> None:
    token = jwt.encode({"sub": "1"}, SECRET, algorithm="HS256")
    assert jwt.decode(token, SECRET, algorithms=["HS256"]) == {"sub": "1"}
    with pytest.raises(jwt.InvalidSignatureError):
        jwt.decode(token, SECRET + "x", algorithms=["HS256"])
