"""The plain sign-in layer without an issuer: ID-token verification (keys made here, as an
issuer's would be), freshness and the token cache, the clients' rules, and the settings."""

from __future__ import annotations

import base64
import json
import time
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa, utils

from juliarun.auth import (
    AuthError,
    NotSignedInError,
    OIDCClient,
    OIDCSettings,
    TokenCache,
    TokenSet,
    TokenSource,
    verify_id_token,
)
from juliarun.errors import ConfigError, SpecError

ISSUER = "https://id.example.org"
NOW = 1_800_000_000.0


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def uint(n: int, size: int | None = None) -> str:
    return b64(n.to_bytes(size or (n.bit_length() + 7) // 8, "big"))


RSA_KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)
EC_KEY = ec.generate_private_key(ec.SECP256R1())
_rsa_pub = RSA_KEY.public_key().public_numbers()
_ec_pub = EC_KEY.public_key().public_numbers()
JWKS = {
    "keys": [
        {"kty": "RSA", "kid": "r1", "use": "sig", "n": uint(_rsa_pub.n), "e": uint(_rsa_pub.e)},
        {
            "kty": "EC",
            "kid": "e1",
            "crv": "P-256",
            "x": uint(_ec_pub.x, 32),
            "y": uint(_ec_pub.y, 32),
        },
    ]
}


def sign(claims: dict[str, Any], *, alg: str = "RS256", kid: str = "r1", key: Any = None) -> str:
    head = b64(json.dumps({"alg": alg, "kid": kid, "typ": "JWT"}).encode())
    body = b64(json.dumps(claims).encode())
    signed = f"{head}.{body}".encode()
    if alg == "RS256":
        sig = (key or RSA_KEY).sign(signed, padding.PKCS1v15(), hashes.SHA256())
    elif alg == "ES256":
        r, s = utils.decode_dss_signature((key or EC_KEY).sign(signed, ec.ECDSA(hashes.SHA256())))
        sig = r.to_bytes(32, "big") + s.to_bytes(32, "big")
    else:
        sig = b""
    return f"{head}.{body}.{b64(sig)}"


def claims(**over: Any) -> dict[str, Any]:
    base = {
        "iss": ISSUER,
        "aud": ["cli"],
        "sub": "alice",
        "iat": NOW,
        "exp": NOW + 300,
        "nonce": "n1",
    }
    return {**base, **over}


def verify(token: str, **kw: Any) -> dict[str, Any]:
    args: dict[str, Any] = {"issuer": ISSUER, "audience": "cli", "now": NOW, "nonce": "n1"}
    return verify_id_token(token, JWKS, **{**args, **kw})


def test_rs256_and_es256_tokens_of_the_issuers_keys_verify() -> None:
    assert verify(sign(claims()))["sub"] == "alice"
    assert verify(sign(claims(aud="cli"), alg="ES256", kid="e1"))["aud"] == "cli"


@pytest.mark.parametrize(
    ("token", "kw", "message"),
    [
        (sign(claims(), alg="none"), {}, "the ID token is signed with 'none'"),
        (sign(claims(), alg="HS256"), {}, "the ID token is signed with 'HS256'"),
        (sign(claims(), kid="r9"), {}, "the ID token's key 'r9' is not among the issuer's keys"),
        (
            sign(claims(), key=rsa.generate_private_key(public_exponent=65537, key_size=2048)),
            {},
            "the ID token's signature does not verify",
        ),
        (sign(claims(iss="https://evil.example")), {}, "names issuer 'https://evil.example'"),
        (sign(claims(aud=["router"])), {}, "the ID token is for ['router'], not client 'cli'"),
        (sign(claims(exp=NOW - 61)), {}, "the ID token has expired"),
        (sign(claims()), {"nonce": "other"}, "the ID token carries another nonce"),
        ("not-a-jwt", {}, "the ID token is not a JWT"),
    ],
)
def test_bad_id_tokens_are_refused(token: str, kw: dict[str, Any], message: str) -> None:
    with pytest.raises(AuthError) as err:
        verify(token, **kw)
    assert message in str(err.value)


def test_a_tampered_payload_does_not_verify() -> None:
    head, _, sig = sign(claims()).split(".")
    forged = b64(json.dumps(claims(sub="root")).encode())
    with pytest.raises(AuthError, match="signature does not verify"):
        verify(f"{head}.{forged}.{sig}")


def token_set(iat: float, exp: float, refresh: str | None = "r") -> TokenSet:
    return TokenSet(ISSUER, "cli", sign(claims(iat=iat, exp=exp)), refresh, None, exp, iat)


def test_freshness_uses_the_leeway_or_half_the_lifetime() -> None:
    long = token_set(NOW, NOW + 3600)
    assert long.fresh(NOW + 3569) and not long.fresh(NOW + 3571)
    short = token_set(NOW, NOW + 6)  # margin: 3 s, not 30
    assert short.fresh(NOW + 2.9) and not short.fresh(NOW + 3.1)
    assert "id_token" not in repr(short) and "refresh_token" not in repr(short)


def test_cache_files_are_private_and_damage_is_reported(tmp_path: Path) -> None:
    cache = TokenCache(tmp_path)
    path = cache.save(token_set(NOW, NOW + 60))
    assert path.parent == tmp_path / "auth"
    assert oct(path.stat().st_mode & 0o777) == "0o600"
    assert [t.client_id for t in cache.all()] == ["cli"]
    assert cache.path(ISSUER + "/", "cli") == path  # one session per issuer and client
    assert cache.path(ISSUER, "other") != path
    path.write_text("{not json")
    with pytest.raises(AuthError, match="is damaged"):
        cache.load(ISSUER, "cli")
    path.chmod(0o640)
    with pytest.raises(AuthError, match=r"open to other users \(mode 0o640\)"):
        cache.load(ISSUER, "cli")
    assert cache.delete(ISSUER, "cli") and not cache.delete(ISSUER, "cli")


def test_a_source_hands_out_fresh_tokens_without_asking_the_issuer(tmp_path: Path) -> None:
    client = OIDCClient(issuer=ISSUER, client_id="cli")
    cache = TokenCache(tmp_path)
    with pytest.raises(NotSignedInError) as err:
        TokenSource(client, cache).id_token()
    assert err.value.hint == f"run `juliarun login --issuer {ISSUER} --client-id cli`"
    tokens = token_set(time.time(), time.time() + 600)
    cache.save(tokens)
    source = TokenSource(client, cache)
    assert source.id_token() == tokens.id_token
    assert source.refreshes == 0


def test_a_stale_token_without_refresh_token_says_to_sign_in(tmp_path: Path) -> None:
    client = OIDCClient(issuer=ISSUER, client_id="cli")
    cache = TokenCache(tmp_path)
    cache.save(token_set(NOW, NOW + 60, refresh=None))
    # nothing is sent (there is no refresh token; id.example.org is never asked)
    with pytest.raises(AuthError) as err:
        TokenSource(client, cache, clock=lambda: NOW + 120).id_token()
    assert err.value.message == f"the session at {ISSUER} has no refresh token"


def test_client_rules_are_checked_before_anything_is_sent() -> None:
    with pytest.raises(SpecError) as err:
        OIDCClient(issuer="https://id.example.org?x=1", client_id="", scopes=["profile", "a b"])
    fields = [f for f, _ in err.value.errors]
    assert fields == ["issuer", "client_id", "scopes"]
    client = OIDCClient(issuer="https://id.example.org/", client_id="cli", client_secret="s3cr3t")
    assert client.issuer == ISSUER
    assert client.auth_form() == {"client_id": "cli", "client_secret": "s3cr3t"}
    assert "s3cr3t" not in repr(client)


def test_settings_name_the_issuer_or_say_how(monkeypatch: pytest.MonkeyPatch) -> None:
    for var in ("ISSUER", "CLIENT_ID", "SCOPES", "CA", "KUBERNETES", "CLIENT_SECRET"):
        monkeypatch.delenv(f"JULIARUN_OIDC_{var}", raising=False)
    with pytest.raises(ConfigError, match="no OpenID Connect issuer given"):
        OIDCSettings().client()
    monkeypatch.setenv("JULIARUN_OIDC_ISSUER", ISSUER)
    monkeypatch.setenv("JULIARUN_OIDC_SCOPES", "openid,groups")
    monkeypatch.setenv("JULIARUN_OIDC_KUBERNETES", "1")
    settings = OIDCSettings()
    assert settings.kubernetes
    assert settings.client().model_dump()["scopes"] == ["openid", "groups"]


def test_the_commands_fail_with_one_error_line_before_any_request(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from typer.testing import CliRunner

    from juliarun.cli_login import app

    for var in ("ISSUER", "CLIENT_ID", "SCOPES", "CA", "KUBERNETES", "CLIENT_SECRET"):
        monkeypatch.delenv(f"JULIARUN_OIDC_{var}", raising=False)
    monkeypatch.setenv("JULIARUN_HOME", str(tmp_path))
    runner = CliRunner()
    done = runner.invoke(app, ["whoami"])
    assert (done.exit_code, done.output) == (1, "not signed in (run `juliarun login`)\n")
    done = runner.invoke(app, ["login", "--no-browser"])
    assert done.exit_code == 1
    assert done.output.splitlines() == [
        "error: no OpenID Connect issuer given",
        "hint: pass --issuer URL, or set JULIARUN_OIDC_ISSUER",
    ]
    done = runner.invoke(app, ["login", "--issuer", "http://id.example.org", "--no-browser"])
    assert done.exit_code == 1
    assert done.output.splitlines()[0].startswith(
        "error: invalid OIDCClient: issuer: must be an https:// URL"
    )
    done = runner.invoke(app, ["logout", "--issuer", ISSUER])
    assert (done.exit_code, done.output) == (0, f"not signed in at {ISSUER}\n")
    assert not (tmp_path / "auth").exists()
