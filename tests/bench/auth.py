"""Benchmark: what verifying one bearer token costs, OIDC (keys cached) against the dev HS256 path.

Run: .venv/bin/python -m tests.bench.auth [--verifies N] [--repeats R] [--tokens T]
     (defaults 2000, 15, 100)

Each path verifies its T distinct tokens (distinct subjects) in turn, N verifications per
repeat; the paths take turns within each repeat (so a change of load hits all alike), and the
median over R repeats is printed in microseconds per verification:

- HS256: ``TokenVerifier.verify``, the embedded mode's dev secret (the baseline);
- RS256 (2048-bit), ES256 (P-256), EdDSA (Ed25519): ``OidcVerifier.verify`` with the
  provider's key set already fetched, as every request after the first one within
  ``BROKER_OIDC_JWKS_CACHE_SECONDS`` finds it. The provider is in process (an httpx mock
  transport serving the discovery document and the JWKS), so no network is timed; the run
  checks that the timed loops made no fetch at all.

Beside each, PyJWT's own ``jwt.decode`` of the same tokens with the same key (signature, exp,
iss, aud), which is the floor for that algorithm; the ratio columns divide by the HS256 path
and by that floor, the last one being what the broker's own steps add (reading the header to
pick the key, the lifetime, org and role rules).
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections.abc import Callable, Sequence
from typing import Any

import httpx
import jwt
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

from broker.api.auth import TokenVerifier, mint_token
from broker.api.oidc import OidcVerifier

ISSUER = "https://idp.bench.invalid/realms/broker"
SECRET = "bench-secret-that-is-long-enough-for-hmac-0123456789abcdef"
Key = rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey | ed25519.Ed25519PrivateKey


def _keys() -> dict[str, Key]:
    return {
        "RS256": rsa.generate_private_key(public_exponent=65537, key_size=2048),
        "ES256": ec.generate_private_key(ec.SECP256R1()),
        "EdDSA": ed25519.Ed25519PrivateKey.generate(),
    }


def _provider(keys: dict[str, Key]) -> httpx.MockTransport:
    """An in-process provider: discovery and the JWKS of ``keys`` (kid = algorithm)."""
    jwks = {"keys": [_public_jwk(k, alg) | {"kid": alg, "use": "sig"}
                     for alg, k in keys.items()]}
    discovery = {"issuer": ISSUER, "jwks_uri": ISSUER + "/certs"}

    def answer(request: httpx.Request) -> httpx.Response:
        if request.url.path.endswith("/.well-known/openid-configuration"):
            return httpx.Response(200, json=discovery)
        return httpx.Response(200, json=jwks)

    return httpx.MockTransport(answer)


def _public_jwk(key: Key, alg: str) -> dict[str, Any]:
    """The JWK of ``key``'s public half."""
    algorithm = jwt.get_algorithm_by_name(alg)
    jwk: dict[str, Any] = json.loads(algorithm.to_jwk(key.public_key()))
    return jwk


def _oidc_tokens(key: Key, alg: str, count: int) -> list[str]:
    now = int(time.time())
    return [jwt.encode({"iss": ISSUER, "aud": "broker", "sub": f"user-{i}@ops", "org": "broker-ops",
                        "realm_access": {"roles": ["admin", "offline_access"]},
                        "iat": now, "exp": now + 3600}, key, algorithm=alg, headers={"kid": alg})
            for i in range(count)]


def _decoder(key: Key | str, alg: str, issuer: str = ISSUER) -> Callable[[str], object]:
    """PyJWT's own decode with ``key`` (its public half): the floor for ``alg``."""
    public = key if isinstance(key, str) else key.public_key()

    def decode(token: str) -> object:
        return jwt.decode(token, public, algorithms=[alg], audience="broker", issuer=issuer)

    return decode


Path = tuple[str, Callable[[str], object], list[str]]


def _time(paths: Sequence[Path], n: int, repeats: int) -> dict[str, float]:
    """Median microseconds per call of each path over ``repeats`` runs of ``n`` calls; the
    paths take turns within each repeat, so a change of load on the machine hits all alike."""
    runs: dict[str, list[float]] = {name: [] for name, _, _ in paths}
    for _ in range(repeats):
        for name, verify, tokens in paths:
            start = time.perf_counter_ns()
            for i in range(n):
                verify(tokens[i % len(tokens)])
            runs[name].append((time.perf_counter_ns() - start) / n / 1000)
    return {name: statistics.median(times) for name, times in runs.items()}


def main() -> None:
    """Time each path and print the table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--verifies", type=int, default=2000, help="verifications per repeat")
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--tokens", type=int, default=100, help="distinct tokens, used in turn")
    args = parser.parse_args()

    dev = TokenVerifier(key=SECRET, algorithms=["HS256"], issuer="broker-dev",
                        audience="broker")
    dev_tokens = [mint_token(key=SECRET, issuer="broker-dev", audience="broker",
                             sub=f"user-{i}@ops", org="broker-ops", roles=["admin"])
                  for i in range(args.tokens)]
    paths: list[Path] = [("HS256", dev.verify, dev_tokens),
                         ("HS256 raw", _decoder(SECRET, "HS256", "broker-dev"), dev_tokens)]
    keys = _keys()
    oidc = OidcVerifier(issuer=ISSUER, audience="broker", roles_claim="realm_access.roles",
                        http=httpx.Client(transport=_provider(keys)))
    for alg, key in keys.items():
        tokens = _oidc_tokens(key, alg, args.tokens)
        oidc.verify(tokens[0])  # the one fetch of discovery and key set
        paths += [(alg, oidc.verify, tokens), (f"{alg} raw", _decoder(key, alg), tokens)]
    fetched = oidc.keys.attempts
    medians = _time(paths, args.verifies, args.repeats)
    assert oidc.keys.attempts == fetched, "a timed verification fetched the keys"
    oidc.close()

    baseline = medians["HS256"]
    print(f"{args.verifies:,} verifications x {args.repeats} repeats (paths in turn), "
          f"{args.tokens} distinct tokens, medians; microseconds per verification")
    print(f"  {'path':<26} {'broker us':>10} {'/ HS256':>8} {'jwt.decode us':>14} "
          f"{'broker / decode':>16}")
    for alg, name in (("HS256", "HS256 (dev secret)"), ("RS256", "RS256 (OIDC, JWKS cached)"),
                      ("ES256", "ES256 (OIDC, JWKS cached)"),
                      ("EdDSA", "EdDSA (OIDC, JWKS cached)")):
        broker, raw = medians[alg], medians[f"{alg} raw"]
        print(f"  {name:<26} {broker:>10.1f} {broker / baseline:>7.2f}x {raw:>14.1f} "
              f"{broker / raw:>15.2f}x")
    print(f"  key set fetches: {fetched} before timing (with the first token), none in the "
          "timed loops")


if __name__ == "__main__":
    main()
