"""Streaming JWE: chunk-boundary independence, tamper/truncation detection and bounded memory."""

from __future__ import annotations

import gc
import hashlib
import io
import itertools
import tracemalloc
import zlib
from pathlib import Path
from unittest import mock

import psutil
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from joserfc import jwe as rfc_jwe
from joserfc.jwk import RSAKey

from gateway.fitconnect import jose
from gateway.fitconnect.jose import (
    DecryptionError,
    JoseError,
    JWEFormatError,
    JWEStreamDecryptor,
    PlaintextTooLarge,
    StreamResult,
    UnsupportedAlgorithm,
    b64url_decode,
    b64url_encode,
    decrypt_jwe,
    encrypt_jwe,
    encrypt_jwe_stream,
)

from .conftest import KeySet
from .test_jose import GOOD, raw_jwe


def feed_and_finish(dec: JWEStreamDecryptor, data: bytes) -> StreamResult:
    dec.feed(data)
    return dec.finish()


def stream_decrypt(
    compact: bytes, key_set: KeySet, cuts: list[int] | None = None, *, max_plaintext: int = 64 << 20
) -> tuple[bytes, StreamResult]:
    sink = io.BytesIO()
    dec = JWEStreamDecryptor([key_set.encryption], sink, max_plaintext=max_plaintext)
    bounds = sorted({c % (len(compact) + 1) for c in (cuts or [])} | {0, len(compact)})
    for start, end in itertools.pairwise(bounds):
        dec.feed(compact[start:end])
    result = dec.finish()
    return sink.getvalue(), result


@settings(max_examples=60, deadline=None)
@given(
    plaintext=st.binary(max_size=2000),
    cuts=st.lists(st.integers(min_value=0, max_value=5000), max_size=12),
    zip_def=st.booleans(),
    kid=st.sampled_from([None, "kid-1"]),
)
def test_stream_equals_one_shot(
    key_set: KeySet, plaintext: bytes, cuts: list[int], zip_def: bool, kid: str | None
) -> None:
    compact = encrypt_jwe(plaintext, key_set.encryption.key.public_key(), kid=kid, cty="x/y", zip_def=zip_def)
    out, result = stream_decrypt(compact.encode(), key_set, cuts)
    one_shot = decrypt_jwe(compact, [key_set.encryption])
    assert out == one_shot.plaintext == plaintext
    assert result.header == one_shot.header
    assert result.tag_b64 == compact.rsplit(".", 1)[1]
    assert result.sha512_hex == hashlib.sha512(plaintext).hexdigest()
    assert result.size == len(plaintext)
    assert result.kid_used == key_set.encryption.kid


@settings(max_examples=25, deadline=None)
@given(plaintext=st.binary(max_size=5000), chunk=st.integers(min_value=1, max_value=700), zip_def=st.booleans())
def test_stream_encryptor_matches_decryptors(key_set: KeySet, plaintext: bytes, chunk: int, zip_def: bool) -> None:
    dst = io.BytesIO()
    tag = encrypt_jwe_stream(
        io.BytesIO(plaintext),
        dst,
        key_set.encryption.key.public_key(),
        kid="k",
        cty=None,
        zip_def=zip_def,
        chunk_size=chunk,
    )
    compact = dst.getvalue().decode("ascii")
    assert compact.rsplit(".", 1)[1] == tag
    assert decrypt_jwe(compact, [key_set.encryption]).plaintext == plaintext
    assert stream_decrypt(compact.encode(), key_set, [chunk * 3])[0] == plaintext


@pytest.mark.parametrize("zip_def", [False, True])
def test_stream_output_interoperates_with_joserfc(key_set: KeySet, zip_def: bool) -> None:
    plaintext = b"%PDF-1.7 test attachment " * 1600  # joserfc caps compact JWEs at ~66 KB
    dst = io.BytesIO()
    encrypt_jwe_stream(
        io.BytesIO(plaintext),
        dst,
        key_set.encryption.key.public_key(),
        kid="k",
        cty="application/pdf",
        zip_def=zip_def,
        chunk_size=4096,
    )
    rfc_key = RSAKey.import_key(key_set.encryption.key)
    assert rfc_jwe.decrypt_compact(
        dst.getvalue(), rfc_key, algorithms=["RSA-OAEP-256", "A256GCM", "DEF"]
    ).plaintext == (plaintext)
    public = {k: v for k, v in key_set.encryption_public.items() if k != "key_ops"}
    foreign = rfc_jwe.encrypt_compact(
        {"alg": "RSA-OAEP-256", "enc": "A256GCM"},
        plaintext,
        RSAKey.import_key(public),
        algorithms=["RSA-OAEP-256", "A256GCM"],
    )
    assert stream_decrypt(foreign.encode(), key_set, [1, 700, 5000])[0] == plaintext


def test_truncated_streams_never_pass(key_set: KeySet) -> None:
    compact = encrypt_jwe(b"0123456789" * 100, key_set.encryption.key.public_key(), kid="k", cty=None).encode()
    dots = [i for i, c in enumerate(compact) if c == ord(".")]
    cut_points = sorted(
        {1, 10, dots[0], dots[0] + 1, dots[1] + 5, dots[2], dots[3] - 7, dots[3], dots[3] + 1, len(compact) - 1}
    )
    for cut in cut_points:
        dec = JWEStreamDecryptor([key_set.encryption], io.BytesIO())
        with pytest.raises(JoseError):
            feed_and_finish(dec, compact[:cut])


def test_tampered_stream_fails_at_finish(key_set: KeySet) -> None:
    compact = encrypt_jwe(b"a" * 5000, key_set.encryption.key.public_key(), kid="k", cty=None)
    segments = compact.split(".")
    ct = bytearray(b64url_decode(segments[3]))
    ct[4000] ^= 1
    segments[3] = b64url_encode(bytes(ct))
    sink = io.BytesIO()
    dec = JWEStreamDecryptor([key_set.encryption], sink)
    dec.feed(".".join(segments).encode())
    assert len(sink.getvalue()) == 5000  # unauthenticated plaintext already written ...
    with pytest.raises(DecryptionError) as info:
        dec.finish()  # ... and only finish() tells that it must be discarded
    assert info.value.code == "tag-mismatch"
    with pytest.raises(DecryptionError):
        dec.finish()  # the failure is sticky
    with pytest.raises(DecryptionError):
        dec.feed(b"more")


@pytest.mark.parametrize(
    ("mutate", "code"),
    [
        (lambda c: c + b".extra", "jwe-segments"),
        (lambda c: b".".join([*c.split(b".")[:3], b"!" + c.split(b".")[3], c.split(b".")[4]]), "jwe-ciphertext"),
        (lambda c: b"A" * 20000 + c, "jwe-header"),
        (lambda c: c.split(b".")[0] + b"." + b"A" * 3000 + b".", "jwe-encrypted-key"),
        (lambda c: b".".join([*c.split(b".")[:2], b"A" * 100, b""]), "jwe-iv"),
        (lambda c: b".".join([*c.split(b".")[:4], b"A" * 100]), "jwe-tag"),
        (lambda c: b".".join([*c.split(b".")[:4], b"AAAA"]), "jwe-tag"),
    ],
)
def test_stream_format_errors(key_set: KeySet, mutate: object, code: str) -> None:
    compact = encrypt_jwe(b"hello stream", key_set.encryption.key.public_key(), kid="k", cty=None).encode()
    assert callable(mutate)
    dec = JWEStreamDecryptor([key_set.encryption], io.BytesIO())
    with pytest.raises(JWEFormatError) as info:
        feed_and_finish(dec, mutate(compact))
    assert info.value.code == code


def test_stream_rejects_unsupported_header(key_set: KeySet) -> None:
    compact = raw_jwe(
        {"alg": "RSA-OAEP-256", "enc": "A128GCM"}, b"x", key_set.encryption.key.public_key(), cek_bits=128
    )
    dec = JWEStreamDecryptor([key_set.encryption], io.BytesIO())
    with pytest.raises(UnsupportedAlgorithm):
        dec.feed(compact.encode())


def test_stream_zip_bomb_is_bounded(key_set: KeySet) -> None:
    comp = zlib.compressobj(9, zlib.DEFLATED, -15)
    body = comp.compress(b"\0" * (16 << 20)) + comp.flush()
    compact = raw_jwe({**GOOD, "zip": "DEF"}, body, key_set.encryption.key.public_key())

    class CountingSink(io.RawIOBase):
        written = 0

        def write(self, b: object) -> int:
            n = len(b)  # type: ignore[arg-type]
            self.written += n
            return n

    sink = CountingSink()
    dec = JWEStreamDecryptor([key_set.encryption], sink, max_plaintext=2 << 20)  # type: ignore[arg-type]
    with pytest.raises(PlaintextTooLarge):
        feed_and_finish(dec, compact.encode())
    assert sink.written <= 2 << 20


def test_stream_plaintext_bound_without_zip(key_set: KeySet) -> None:
    compact = encrypt_jwe(b"z" * 3000, key_set.encryption.key.public_key(), kid=None, cty=None)
    with pytest.raises(PlaintextTooLarge):
        stream_decrypt(compact.encode(), key_set, [100, 1000, 2000], max_plaintext=2999)


class PatternSource(io.RawIOBase):
    """``size`` bytes of a cheap deterministic non-repeating pattern, produced chunk by chunk."""

    def __init__(self, size: int) -> None:
        self.remaining = size
        self.counter = 0
        self.digest = hashlib.sha512()

    def readable(self) -> bool:
        return True

    def read(self, n: int = -1) -> bytes:
        n = self.remaining if n < 0 else min(n, self.remaining)
        block = hashlib.sha512(self.counter.to_bytes(8, "big")).digest() * ((n // 64) + 1)
        data = block[:n]
        self.counter += 1
        self.remaining -= n
        self.digest.update(data)
        return data


class HashSink(io.RawIOBase):
    def __init__(self) -> None:
        self.digest = hashlib.sha512()
        self.size = 0

    def writable(self) -> bool:
        return True

    def write(self, b: object) -> int:
        data = bytes(b)  # type: ignore[call-overload]
        self.digest.update(data)
        self.size += len(data)
        return len(data)


def test_64mb_stream_round_trip_has_bounded_memory(key_set: KeySet, tmp_path: Path) -> None:
    size = 64 << 20
    jwe_path = tmp_path / "big.jwe"
    process = psutil.Process()
    gc.collect()
    rss_before = process.memory_info().rss

    src = PatternSource(size)
    tracemalloc.start()
    try:
        with jwe_path.open("wb") as dst:
            tag = encrypt_jwe_stream(src, dst, key_set.encryption.key.public_key(), kid="k", cty="application/pdf")
        _, encrypt_peak = tracemalloc.get_traced_memory()
        tracemalloc.reset_peak()

        sink = HashSink()
        dec = JWEStreamDecryptor([key_set.encryption], sink, max_plaintext=size)  # type: ignore[arg-type]
        with jwe_path.open("rb") as fh:
            while chunk := fh.read(3 << 20):  # deliberately not aligned to base64 groups
                dec.feed(chunk)
        result = dec.finish()
        _, decrypt_peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    rss_growth = process.memory_info().rss - rss_before

    assert jwe_path.stat().st_size > size * 4 // 3
    assert result.tag_b64 == tag
    assert result.size == sink.size == size
    assert result.sha512_hex == sink.digest.hexdigest() == src.digest.hexdigest()
    # Bounded: a few MB per step regardless of the 64 MB payload (the 3 MB reads included).
    assert encrypt_peak < 16 << 20, encrypt_peak
    assert decrypt_peak < 24 << 20, decrypt_peak
    assert rss_growth < 48 << 20, rss_growth


@settings(max_examples=30, deadline=None)
@given(plaintext=st.binary(max_size=3000).map(lambda b: b * 7), step=st.integers(min_value=1, max_value=64))
def test_inflate_in_tiny_steps(key_set: KeySet, plaintext: bytes, step: int) -> None:
    # Small output steps force zlib to keep output pending after all input was consumed.
    compact = encrypt_jwe(plaintext, key_set.encryption.key.public_key(), kid=None, cty=None, zip_def=True)
    with mock.patch.object(jose, "INFLATE_STEP", step):
        assert decrypt_jwe(compact, [key_set.encryption]).plaintext == plaintext
        assert stream_decrypt(compact.encode(), key_set, [len(compact) // 2])[0] == plaintext


def test_highly_compressed_stream_stays_bounded(key_set: KeySet) -> None:
    size = 48 << 20
    comp = zlib.compressobj(9, zlib.DEFLATED, -15)
    body = comp.compress(b"\0" * size) + comp.flush()
    compact = raw_jwe({**GOOD, "zip": "DEF"}, body, key_set.encryption.key.public_key()).encode()
    del body
    sink = HashSink()
    tracemalloc.start()
    try:
        result = feed_and_finish(JWEStreamDecryptor([key_set.encryption], sink, max_plaintext=size), compact)  # type: ignore[arg-type]
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert result.size == size
    assert result.sha512_hex == hashlib.sha512(b"\0" * size).hexdigest()
    assert peak < 8 << 20, peak
