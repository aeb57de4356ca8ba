"""Revocation in the subscriber: our own revoked key is refused at start-up; a Zustelldienst key
revoked while the gateway runs stops verifying (invalid-event-log) once the CRL directory changes;
an unanswered OCSP check in fail-closed mode defers instead of rejecting; the expiry metric is set."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric.rsa import RSAPrivateKey
from cryptography.hazmat.primitives.serialization import Encoding

from gateway.errors import ConfigError
from gateway.fitconnect.keys import jwk_from_private_key, x5c_entry
from gateway.sources.fitconnect.client import ApiError
from gateway.sources.fitconnect.eventlog import KeyResolver, LogProblem
from gateway.sources.fitconnect.options import parse_options
from gateway.sources.fitconnect.source import FitConnectSource
from gateway.trust.crl import CrlDirectory
from gateway.trust.ocsp import OcspChecker

from .pki import certificate, crl, jwk_with_chain, name
from .test_subscriber_options import context, options

CaKeys = tuple[RSAPrivateKey, RSAPrivateKey, RSAPrivateKey]


@pytest.fixture(scope="module")
def chain(ca_keys: CaKeys) -> tuple[x509.Certificate, x509.Certificate, CaKeys]:
    root_key, inter_key, _ = ca_keys
    root = certificate(
        subject=name("Root"), subject_key=root_key.public_key(), issuer=name("Root"), issuer_key=root_key, ca=True
    )
    inter = certificate(
        subject=name("Sub CA"), subject_key=inter_key.public_key(), issuer=name("Root"), issuer_key=root_key, ca=True
    )
    return root, inter, ca_keys


def leaf(chain: Any, key: RSAPrivateKey, usage: str, **kwargs: Any) -> x509.Certificate:
    _, _, (_, inter_key, _) = chain
    return certificate(
        subject=name(f"Bauamt {usage}"),
        subject_key=key.public_key(),
        issuer=name("Sub CA"),
        issuer_key=inter_key,
        ca=False,
        key_usage=usage,
        **kwargs,
    )


def write_own_keys(tmp_path: Path, chain: Any, key: RSAPrivateKey) -> tuple[x509.Certificate, dict[str, Any]]:
    root, inter, _ = chain
    enc_leaf, sig_leaf = leaf(chain, key, "encryption"), leaf(chain, key, "signing")
    for file, kid, alg, ops, cert in (
        ("enc.json", "enc-key-0001", "RSA-OAEP-256", ["unwrapKey"], enc_leaf),
        ("sig.json", "sig-key-0001", "PS512", ["sign"], sig_leaf),
    ):
        jwk = jwk_from_private_key(key, kid=kid, alg=alg, key_ops=ops, x5c=[x5c_entry(cert), x5c_entry(inter)])
        (tmp_path / file).write_text(json.dumps(jwk))
    (tmp_path / "root.pem").write_bytes(root.public_bytes(Encoding.PEM))
    (tmp_path / "crl").mkdir()
    extra = {
        "decryption_keys": [str(tmp_path / "enc.json")],
        "signing_key": str(tmp_path / "sig.json"),
        "trust_anchors": [str(tmp_path / "root.pem")],
        "allow_self_signed": None,
        "crl_dir": "crl",
    }
    return enc_leaf, extra


def test_own_revoked_key_is_refused_at_startup(
    tmp_path: Path, fitconnect_shared: Path, chain: Any, second_key: RSAPrivateKey
) -> None:
    enc_leaf, extra = write_own_keys(tmp_path, chain, second_key)
    raw = options(tmp_path, fitconnect_shared, **extra)
    opts = parse_options(context(tmp_path), raw)  # not revoked yet: starts
    _, inter, (_, inter_key, _) = chain
    (tmp_path / "crl" / "sub-ca.crl").write_bytes(crl(inter, inter_key, [enc_leaf]).public_bytes(Encoding.DER))
    with pytest.raises(ConfigError) as info:
        parse_options(context(tmp_path), raw)
    assert info.value.key == "decryption_keys"
    assert "revoked" in info.value.reason
    # the running source reports its certificates' expiry
    ctx = context(tmp_path)
    FitConnectSource(ctx, opts)
    rendered = ctx.metrics.registry.get_sample_value(
        "gateway_certificate_expiry_timestamp_seconds",
        {"channel": "fc", "role": "own-key", "subject": enc_leaf.subject.rfc4514_string()},
    )
    assert rendered == enc_leaf.not_valid_after_utc.timestamp()


class FakeApi:
    def __init__(self, jwks: dict[str, Any]) -> None:
        self.jwks = jwks
        self.calls = 0

    async def get_jwks(self) -> dict[str, Any]:
        self.calls += 1
        return self.jwks


async def test_zsd_key_revoked_while_running(tmp_path: Path, chain: Any, second_key: RSAPrivateKey) -> None:
    root, inter, (_, inter_key, _) = chain
    zsd_leaf = leaf(chain, second_key, "signing")
    jwk = jwk_with_chain(second_key.public_key(), [zsd_leaf, inter], purpose="signing", kid="zsd-key-0001")
    api = FakeApi({"keys": [jwk]})
    seen: list[tuple[x509.Certificate, ...]] = []
    keys = KeyResolver(
        api,  # type: ignore[arg-type]
        (root,),
        False,
        zsd_issuer="https://zsd.example.org",
        crls=CrlDirectory(tmp_path),
        on_validated=seen.append,
    )
    assert await keys.zsd_key("zsd-key-0001")
    assert await keys.zsd_key("zsd-key-0001")  # cached
    assert len(seen) == 1
    (tmp_path / "sub-ca.pem").write_bytes(crl(inter, inter_key, [zsd_leaf]).public_bytes(Encoding.PEM))
    with pytest.raises(LogProblem) as info:
        await keys.zsd_key("zsd-key-0001")  # the directory changed: re-checked, now revoked
    assert info.value.problem.type.endswith("invalid-event-log")
    assert "(revoked)" in info.value.problem.detail
    assert api.calls == 1  # re-checked from the cache, not re-fetched


async def test_unanswered_ocsp_in_fail_closed_mode_defers(chain: Any, second_key: RSAPrivateKey) -> None:
    root, inter, _ = chain
    zsd_leaf = leaf(chain, second_key, "signing", ocsp_url="http://127.0.0.1:9/ocsp")
    jwk = jwk_with_chain(second_key.public_key(), [zsd_leaf, inter], purpose="signing", kid="zsd-key-0002")
    for mode, outcome in (("fail-closed", ApiError), ("fail-open", None)):
        checker = OcspChecker(mode, timeout=5)
        keys = KeyResolver(
            FakeApi({"keys": [jwk]}),  # type: ignore[arg-type]
            (root,),
            False,
            zsd_issuer="https://zsd.example.org",
            ocsp=checker,
        )
        try:
            if outcome is None:
                assert await keys.zsd_key("zsd-key-0002")
            else:
                with pytest.raises(outcome):  # try again later: no reject of the sender's submission
                    await keys.zsd_key("zsd-key-0002")
        finally:
            await checker.close()
