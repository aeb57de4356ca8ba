"""Streaming JWE decryption: every chunk boundary and every slice boundary decodes identically.

The decryptor searches its input in place and carries up to three base64url characters from one
chunk (or slice) to the next; these tests put a boundary at every position of a JWE, shrink the
slice so the slicing runs many times within one chunk, and check that the base64url alphabet is
enforced in the carried-over groups too.
"""

from __future__ import annotations

import io
from array import array

import pytest
from cryptography.hazmat.primitives.asymmetric.rsa import RSAPrivateKey

from gateway.fitconnect import jose
from gateway.fitconnect.jose import (
    JWEFormatError,
    JWEStreamDecryptor,
    PrivateKeyEntry,
    encrypt_jwe,
)

PLAINTEXT = bytes(range(256)) * 2 + b"tail"  # 516 bytes: the last base64 group is partial (2 chars)


@pytest.fixture(scope="module")
def fast_key(ca_keys: tuple[RSAPrivateKey, RSAPrivateKey, RSAPrivateKey]) -> PrivateKeyEntry:
    """RSA-2048 keeps hundreds of key unwraps quick (the profile does not police the key size)."""
    return PrivateKeyEntry.from_key("fast", ca_keys[0])


def compact_jwe(key: PrivateKeyEntry, plaintext: bytes = PLAINTEXT, *, zip_def: bool = False) -> bytes:
    return encrypt_jwe(plaintext, key.key.public_key(), kid=key.kid, cty=None, zip_def=zip_def).encode()


def decrypt_in_pieces(key: PrivateKeyEntry, pieces: list[bytes | bytearray | memoryview]) -> bytes:
    sink = io.BytesIO()
    dec = JWEStreamDecryptor([key], sink)
    for piece in pieces:
        dec.feed(piece)
    result = dec.finish()
    assert result.size == len(sink.getvalue())
    return sink.getvalue()


@pytest.mark.parametrize("slice_chars", [4, 8, 12, jose.STREAM_SLICE_CHARS])
def test_every_single_cut_decodes_identically(
    fast_key: PrivateKeyEntry, slice_chars: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(jose, "STREAM_SLICE_CHARS", slice_chars)
    compact = compact_jwe(fast_key)
    # Every position of the ciphertext segment and a few around each dot.
    dots = [i for i, c in enumerate(compact) if c == ord(".")]
    cuts = set(range(dots[2], dots[3] + 2)) | {d + k for d in dots for k in (-1, 0, 1, 2)} | {0, len(compact)}
    for cut in sorted(c for c in cuts if 0 <= c <= len(compact)):
        assert decrypt_in_pieces(fast_key, [compact[:cut], compact[cut:]]) == PLAINTEXT, cut


def test_byte_by_byte_and_three_byte_feeds(fast_key: PrivateKeyEntry) -> None:
    compact = compact_jwe(fast_key)
    assert decrypt_in_pieces(fast_key, [compact[i : i + 1] for i in range(len(compact))]) == PLAINTEXT
    assert decrypt_in_pieces(fast_key, [compact[i : i + 3] for i in range(0, len(compact), 3)]) == PLAINTEXT


def test_buffer_types_are_accepted_and_may_be_reused(fast_key: PrivateKeyEntry) -> None:
    compact = compact_jwe(fast_key)
    half = len(compact) // 2 + 1
    assert decrypt_in_pieces(fast_key, [bytearray(compact[:half]), memoryview(compact)[half:]]) == PLAINTEXT
    # A caller's buffer is reused right after feed() returns (the pipeline does exactly this).
    sink = io.BytesIO()
    dec = JWEStreamDecryptor([fast_key], sink)
    buf = bytearray(7)
    for i in range(0, len(compact), 7):
        piece = compact[i : i + 7]
        buf[: len(piece)] = piece
        dec.feed(buf if len(piece) == 7 else bytes(piece))
    dec.finish()
    assert sink.getvalue() == PLAINTEXT
    # Multi-byte item formats are read as their raw bytes.
    padded = compact + b"\0" * (-len(compact) % 4)
    words = array("I", padded)
    dec = JWEStreamDecryptor([fast_key], io.BytesIO())
    dec.feed(memoryview(words)[: len(compact) // 4])
    dec.feed(compact[len(compact) // 4 * 4 :])
    assert dec.finish().size == len(PLAINTEXT)


def test_inflated_stream_with_tiny_slices(fast_key: PrivateKeyEntry, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(jose, "STREAM_SLICE_CHARS", 8)
    plaintext = b"Antrag auf Baugenehmigung " * 200
    compact = compact_jwe(fast_key, plaintext, zip_def=True)
    for step in (1, 5, 64, 1000):
        assert decrypt_in_pieces(fast_key, [compact[i : i + step] for i in range(0, len(compact), step)]) == plaintext


@pytest.mark.parametrize("bad", [b"+", b"/", b"=", b"!", b" "])
@pytest.mark.parametrize("offset", [0, 1, 2, 3, 5, 130])
@pytest.mark.parametrize("split", [0, 1, 2, 3])
def test_foreign_characters_are_refused_in_every_group_position(
    fast_key: PrivateKeyEntry, bad: bytes, offset: int, split: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """'+' and '/' are standard base64 (not base64url); '=' is padding inside the segment; the
    character is placed at each position of a 4-char group, also in a group carried between chunks."""
    monkeypatch.setattr(jose, "STREAM_SLICE_CHARS", 64)
    compact = compact_jwe(fast_key)
    start = compact.index(b".", compact.index(b".", compact.index(b".") + 1) + 1) + 1
    pos = start + offset
    mangled = compact[:pos] + bad + compact[pos + 1 :]
    cut = pos - split  # the chunk boundary falls 0..3 characters before the bad one
    with pytest.raises(JWEFormatError) as info:
        decrypt_in_pieces(fast_key, [mangled[:cut], mangled[cut:]])
    assert info.value.code == "jwe-ciphertext"
