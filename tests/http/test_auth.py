"""Bearer tokens: parsing the header, recognising the configured tokens, comparing in constant time."""

from __future__ import annotations

import hmac

import pytest

from service.http import auth
from service.http.auth import Authenticator, bearer_token

TOKEN_A = "tok-A-0123456789abcdef"
TOKEN_B = "tok-B-0123456789abcdef"


@pytest.mark.parametrize(
    ("header", "token"),
    [
        (b"Bearer abc", b"abc"),
        (b"bearer abc", b"abc"),
        (b"BEARER   abc  ", b"abc"),
        (b"Basic YWxhZGRpbjpvcGVuc2VzYW1l", None),
        (b"Bearer", None),
        (b"Bearer ", None),
        (b"Bearer a b", None),
        (b"abc", None),
        (b"", None),
        (None, None),
    ],
)
def test_bearer_token(header: bytes | None, token: bytes | None) -> None:
    assert bearer_token(header) == token


def test_identify_names_the_token_by_its_position_only() -> None:
    authenticator = Authenticator([TOKEN_A, TOKEN_B])
    assert authenticator.identify(f"Bearer {TOKEN_A}".encode()) == 1
    assert authenticator.identify(f"Bearer {TOKEN_B}".encode()) == 2
    assert authenticator.identify(f"Bearer {TOKEN_A[:-1]}".encode()) is None
    assert authenticator.identify(f"Bearer {TOKEN_A}x".encode()) is None
    assert authenticator.identify(TOKEN_A.encode()) is None
    assert authenticator.identify(None) is None


def test_every_token_is_compared_in_constant_time(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[tuple[int, int]] = []
    original = hmac.compare_digest

    def counting(a: bytes, b: bytes) -> bool:
        calls.append((len(a), len(b)))
        return original(a, b)

    monkeypatch.setattr(auth.hmac, "compare_digest", counting)
    authenticator = Authenticator([TOKEN_A, TOKEN_B, "tok-C-0123456789abcdef-longer"])
    assert authenticator.identify(f"Bearer {TOKEN_A}".encode()) == 1
    # the first token matched, yet all three were compared, each as a 32-byte digest whatever the lengths
    assert calls == [(32, 32)] * 3


def test_tokens_are_not_kept_in_the_clear() -> None:
    authenticator = Authenticator([TOKEN_A])
    assert TOKEN_A not in repr(vars(authenticator))


def test_an_authenticator_without_tokens_is_a_mistake() -> None:
    with pytest.raises(ValueError):
        Authenticator([])
