"""The fitconnect reply channel end to end: a real gateway (fitconnect source), the sandbox Zustelldienst
and its test online service as the applicant. Accept, reject with problems, the breakage modes, the
idempotent retry after a crash, upstream failures, the callback hint, and the JWEs decrypted
independently with joserfc."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from joserfc import jwe as rfc_jwe
from joserfc.jwk import RSAKey

from gateway.channels.base import ConfirmationHints, ConfirmOutcome, SendOutcome
from gateway.fitconnect import replies as rp
from gateway.fitconnect.client import HttpResult
from gateway.fitconnect.jose import b64url_decode, b64url_encode
from gateway.fitconnect.problems import PROBLEM_PREFIX
from gateway.sources.fitconnect.client import SubmissionApi, TokenProvider
from gateway.sources.fitconnect.profile import PROFILES
from gateway_sandbox.online_service.replies import ApplicantKey, ReplyBreakage

from .reply_helpers import PDF, WayBack, way_back
from .subscriber_helpers import eventually

XBAU = "urn:xoev-de:bmk:standard:xbau_2.4"
RFC_ALGS = ["RSA-OAEP-256", "A256GCM"]  # joserfc's registry, limited to the FIT-Connect profile
XBAU_ANSWER = b'<?xml version="1.0" encoding="UTF-8"?><baugenehmigung><bescheid>erteilt</bescheid></baugenehmigung>'


def problem_kinds(problems: Any) -> list[tuple[str, str | None]]:
    return [(p.type.removeprefix(PROBLEM_PREFIX), p.instance) for p in problems]


async def sent_and_answered(way: WayBack, **outgoing: Any) -> tuple[Any, Any]:
    """Submit an application, send an answer to it, let the applicant process it; (outgoing, result)."""
    _sent, message = await way.submit()
    out = way.outgoing(message, **outgoing)
    result = await way.send(out)
    assert result.outcome is SendOutcome.SENT, result.reason
    await way.applicant.poll()
    return out, result


async def test_accepted_reply_with_a_bescheid(
    tmp_path: Path, fitconnect_shared: Path, fitconnect_applicant_key: ApplicantKey
) -> None:
    async with way_back(tmp_path, fitconnect_shared, fitconnect_applicant_key) as way:
        application_id = str(uuid.uuid4())
        sent, message = await way.submit(consent_digital_bescheid=True, application_id=application_id)
        reply = message.reply
        assert reply is not None
        assert (reply.choice, reply.case, reply.destination) == ("fitConnect", sent.case_id, sent.destination_id)
        assert (reply.consent_digital_bescheid, reply.application_id) == (True, application_id)
        assert reply.details["encryptionPublicKey"] == fitconnect_applicant_key.public_jwk
        assert reply.details["encryptionPublicKeyThumbprint"] == fitconnect_applicant_key.private.thumbprint

        bescheid = way.blob(PDF, media_type="application/pdf", filename="bescheid.pdf")
        outgoing = way.outgoing(message, attachments=[bescheid], content={"title": "Bescheid", "text": "Genehmigt."})
        assert await way.channel.suitable(message, outgoing.answer) is None
        result = await way.send(outgoing)
        assert result.outcome is SendOutcome.SENT, result.reason
        assert (await way.confirm(outgoing, result)).outcome is ConfirmOutcome.PENDING

        (received,) = await way.applicant.poll()
        assert received.accepted, received.problems
        assert received.process_standard == XBAU  # the first offered one the applicant speaks
        assert received.data_json() == {"kind": "reply", "bescheid": False,
                                        "content": {"title": "Bescheid", "text": "Genehmigt."}}  # fmt: skip
        (attachment,) = received.attachments
        assert (attachment.filename, attachment.mime_type, attachment.content) == (
            "bescheid.pdf",
            "application/pdf",
            PDF,
        )
        assert received.metadata is not None
        assert received.metadata["additionalReferenceInfo"] == {"senderReference": outgoing.answer.id}

        confirmed = await way.confirm(outgoing, result)
        assert confirmed.outcome is ConfirmOutcome.CONFIRMED, confirmed.reason
        # The inspection API shows what the applicant received, decrypted.
        (view,) = way.gw.sandbox.replies(sent.case_id)
        assert view["replyId"] == result.reference
        assert view["status"] == "accepted"
        assert [e["event"] for e in view["events"]] == [rp.SUBMIT_REPLY, rp.ACCEPT_REPLY]
        shown = view["received"]
        assert shown["decision"] == "accept-reply"
        assert base64.b64decode(shown["attachments"][0]["content"]) == PDF
        assert shown["attachments"][0]["sha512"] == hashlib.sha512(PDF).hexdigest()


async def test_a_v2_source_replies_under_v2(
    tmp_path: Path, fitconnect_shared: Path, fitconnect_applicant_key: ApplicantKey
) -> None:
    """api_profile v2: the same flow under /v2, with its stricter JWE headers (cty required, no zip)."""
    async with way_back(tmp_path, fitconnect_shared, fitconnect_applicant_key, api_profile="v2") as way:
        seen: list[str] = []
        real_call = way.channel.api.call

        async def recording(method: str, path: str, **kwargs: Any) -> HttpResult:
            seen.append(way.channel.api.url(path, versioned=kwargs.get("versioned", True)))
            return await real_call(method, path, **kwargs)

        way.channel.api.call = recording  # type: ignore[method-assign]
        bescheid = way.blob(PDF, media_type="application/pdf", filename="bescheid.pdf")
        outgoing, result = await sent_and_answered(way, attachments=[bescheid])
        replies = [url for url in seen if "/replies" in url]  # the client is the source's: it polls too
        assert replies
        assert all("/v2/replies" in url for url in replies), replies
        assert (await way.confirm(outgoing, result)).outcome is ConfirmOutcome.CONFIRMED


async def test_xml_data_in_the_common_process_standard(
    tmp_path: Path, fitconnect_shared: Path, fitconnect_applicant_key: ApplicantKey
) -> None:
    standards = ("urn:example:other:1.0", XBAU)
    async with way_back(tmp_path, fitconnect_shared, fitconnect_applicant_key, process_standards=standards) as way:
        data = way.blob(XBAU_ANSWER, media_type="application/xml")
        _out, _result = await sent_and_answered(way, data=data)
        (received,) = way.applicant.received.values()
        assert received.accepted, received.problems
        assert (received.process_standard, received.data_mime_type, received.data) == (
            XBAU,
            "application/xml",
            XBAU_ANSWER,
        )


async def test_jwes_decrypt_with_joserfc(
    tmp_path: Path, fitconnect_shared: Path, fitconnect_applicant_key: ApplicantKey
) -> None:
    """Interoperability: an independent JOSE implementation opens what the channel encrypted."""
    async with way_back(tmp_path, fitconnect_shared, fitconnect_applicant_key) as way:
        _sent, message = await way.submit()
        bescheid = way.blob(PDF, media_type="application/pdf", filename="bescheid.pdf")
        result = await way.send(way.outgoing(message, attachments=[bescheid]))
        view = await way.applicant.api.get_json(rp.path(rp.REPLY, replyId=str(result.reference)), what="get")
        key = fitconnect_applicant_key.private
        private = RSAKey.import_key(key.key)  # joserfc's own key import: nothing of ours in between
        metadata_jwe = rfc_jwe.decrypt_compact(view["encryptedMetadata"], private, algorithms=RFC_ALGS)
        assert metadata_jwe.protected == {"alg": "RSA-OAEP-256", "enc": "A256GCM", "kid": key.kid,
                                          "cty": "application/json"}  # fmt: skip
        metadata = json.loads(metadata_jwe.plaintext or b"")
        data = rfc_jwe.decrypt_compact(view["encryptedData"], private, algorithms=RFC_ALGS).plaintext or b""
        assert hashlib.sha512(data).hexdigest() == metadata["contentStructure"]["data"]["hash"]["content"]
        (aid,) = view["attachments"]
        body = await way.applicant.api.expect("GET", rp.path(rp.REPLY_ATTACHMENT, replyId=str(result.reference),
                                              attachmentId=aid), (200,), what="get")  # fmt: skip
        attachment = rfc_jwe.decrypt_compact(body.decode(), private, algorithms=RFC_ALGS)
        assert attachment.plaintext == PDF
        assert attachment.protected["cty"] == "application/pdf"
        assert "zip" not in attachment.protected


async def test_rejected_on_purpose_is_refused_with_the_problems(
    tmp_path: Path, fitconnect_shared: Path, fitconnect_applicant_key: ApplicantKey
) -> None:
    async with way_back(tmp_path, fitconnect_shared, fitconnect_applicant_key, breakage=ReplyBreakage.REJECT) as way:
        outgoing, result = await sent_and_answered(way)
        refused = await way.confirm(outgoing, result)
        assert refused.outcome is ConfirmOutcome.REFUSED
        assert problem_kinds(refused.problems) == [("technical-error", None)]
        assert "on purpose" in refused.problems[0].detail


@pytest.mark.parametrize(
    ("breakage", "expected"),
    [
        (ReplyBreakage.WRONG_KEY, ("encryption-issue", "metadata")),
        (ReplyBreakage.TAMPERED_CIPHERTEXT, ("encryption-issue", "data")),
        (ReplyBreakage.BAD_TAG, ("incorrect-authentication-tag", "data")),
    ],
)
async def test_broken_replies_are_rejected_with_the_matching_problem(
    tmp_path: Path,
    fitconnect_shared: Path,
    fitconnect_applicant_key: ApplicantKey,
    breakage: ReplyBreakage,
    expected: tuple[str, str],
) -> None:
    async with way_back(tmp_path, fitconnect_shared, fitconnect_applicant_key, breakage=breakage) as way:
        outgoing, result = await sent_and_answered(way)
        refused = await way.confirm(outgoing, result)
        assert refused.outcome is ConfirmOutcome.REFUSED, refused.reason
        assert problem_kinds(refused.problems) == [expected]


class Crash(Exception):
    """Stands for kill -9: the process is gone mid-send."""


async def test_retry_after_a_crash_between_create_and_submit_sends_one_reply(
    tmp_path: Path, fitconnect_shared: Path, fitconnect_applicant_key: ApplicantKey
) -> None:
    async with way_back(tmp_path, fitconnect_shared, fitconnect_applicant_key) as way:
        sent, message = await way.submit()
        bescheid = way.blob(PDF, media_type="application/pdf", filename="bescheid.pdf")
        outgoing = way.outgoing(message, attachments=[bescheid])
        real_call = way.channel.api.call
        seen: list[str] = []

        async def crash_on_upload(method: str, path: str, **kwargs: Any) -> HttpResult:
            seen.append(kwargs["what"])
            if kwargs["what"] == "upload-reply-attachment":
                raise Crash
            return await real_call(method, path, **kwargs)

        way.channel.api.call = crash_on_upload  # type: ignore[method-assign]
        with pytest.raises(Crash):
            await way.send(outgoing)
        assert seen == ["create-reply", "upload-reply-attachment"]
        (incomplete,) = way.gw.sandbox.replies(sent.case_id)
        assert incomplete["status"] == "incomplete"

        way.channel.api.call = real_call  # type: ignore[method-assign]
        retried = await way.send(way.outgoing(message, key=outgoing.answer.id, attachments=[bescheid], attempt=2))
        assert retried.outcome is SendOutcome.SENT, retried.reason
        assert retried.reference == incomplete["replyId"]
        again = await way.send(way.outgoing(message, key=outgoing.answer.id, attachments=[bescheid], attempt=3))
        assert (again.outcome, again.reference) == (SendOutcome.SENT, retried.reference)
        assert "already" in again.reason  # found submitted: nothing sent again

        (reply,) = way.gw.sandbox.replies(sent.case_id)
        assert [e["event"] for e in reply["events"]] == [rp.SUBMIT_REPLY]
        received = await way.applicant.poll()
        assert [r.reply_id for r in received] == [retried.reference]
        assert (await way.confirm(outgoing, retried)).outcome is ConfirmOutcome.CONFIRMED


async def test_crash_after_submit_resumes_without_a_second_reply(
    tmp_path: Path, fitconnect_shared: Path, fitconnect_applicant_key: ApplicantKey
) -> None:
    async with way_back(tmp_path, fitconnect_shared, fitconnect_applicant_key) as way:
        sent, message = await way.submit()
        outgoing = way.outgoing(message)
        real_call = way.channel.api.call

        async def crash_after_submit(method: str, path: str, **kwargs: Any) -> HttpResult:
            result = await real_call(method, path, **kwargs)
            if kwargs["what"] == "submit-reply":
                raise Crash  # the submit reached the Zustelldienst; its answer never reached us
            return result

        way.channel.api.call = crash_after_submit  # type: ignore[method-assign]
        with pytest.raises(Crash):
            await way.send(outgoing)
        way.channel.api.call = real_call  # type: ignore[method-assign]
        retried = await way.send(outgoing)
        assert retried.outcome is SendOutcome.SENT
        assert "already" in retried.reason
        assert len(way.gw.sandbox.replies(sent.case_id)) == 1


async def test_zustelldienst_recording_other_tags_is_a_dead_letter(
    tmp_path: Path, fitconnect_shared: Path, fitconnect_applicant_key: ApplicantKey
) -> None:
    async with way_back(tmp_path, fitconnect_shared, fitconnect_applicant_key) as way:
        _sent, message = await way.submit()
        desk = way.gw.sandbox.sandbox.replies
        real_submit = desk.submit

        def submit_and_tamper(*args: Any, **kwargs: Any) -> Any:
            reply = real_submit(*args, **kwargs)
            desk.tamper(reply.id, "auth-tag-mismatch", "data")
            return reply

        desk.submit = submit_and_tamper  # type: ignore[method-assign]
        result = await way.send(way.outgoing(message))
        assert result.outcome is SendOutcome.PERMANENT
        assert "other authentication tags" in result.reason
        assert result.reference is not None


def padded_weak_key() -> dict[str, Any]:
    """An RSA-2048 key whose n is padded with zero bytes to the 683 characters the metadata schema
    demands: schema-valid, so the application is accepted, but far from 4096 bits."""
    jwk = dict(ApplicantKey.generate(2048).public_jwk)
    jwk["n"] = b64url_encode(b"\0" * 256 + b64url_decode(jwk["n"]))
    assert len(jwk["n"]) >= 683
    return jwk


async def test_suitable_refuses_a_weak_key_foreign_standards_and_a_withdrawn_offer(
    tmp_path: Path, fitconnect_shared: Path, fitconnect_applicant_key: ApplicantKey
) -> None:
    weak = padded_weak_key()
    async with way_back(tmp_path, fitconnect_shared, fitconnect_applicant_key) as way:
        _sent, message = await way.submit(reply_key=weak)
        assert message.reply is not None
        assert "encryptionPublicKeyThumbprint" not in message.reply.details  # not usable: nothing pinned
        outgoing = way.outgoing(message)
        reason = await way.channel.suitable(message, outgoing.answer)
        assert reason == (
            "the applicant's reply key is not usable (n-size: the modulus has 2048 bits, at least 4096 are required)"
        )
        result = await way.send(outgoing)
        assert result.outcome is SendOutcome.PERMANENT
        assert "n-size" in result.reason
        assert way.gw.sandbox.replies(message.reply.case or "") == []  # nothing reached the Zustelldienst

        _sent, good = await way.submit()
        way.gw.sandbox.offer_fitconnect_replies(None)  # the destination stops offering the channel
        way.gw.source.destination.clock = lambda: 1e12  # and the cached destination document is stale
        reason = await way.channel.suitable(good, way.outgoing(good).answer)
        assert reason == f"the destination {way.gw.sandbox.destination_id} does not offer the fitConnect reply channel"

    standards = ("urn:x:y:1",)
    async with way_back(
        tmp_path / "2", fitconnect_shared, fitconnect_applicant_key, process_standards=standards
    ) as way:
        _sent, message = await way.submit()
        reason = await way.channel.suitable(message, way.outgoing(message).answer)
        assert reason == (
            "the applicant's process standards (urn:x:y:1) do not intersect the offered ones "
            "(urn:xoev-de:bmk:standard:xbau_2.4, urn:example:demo:antwort:1.0)"
        )


async def test_the_online_service_learns_by_callback_and_the_gateway_by_callback(
    tmp_path: Path, fitconnect_shared: Path, fitconnect_applicant_key: ApplicantKey
) -> None:
    async with way_back(tmp_path, fitconnect_shared, fitconnect_applicant_key) as way:
        hints: list[list[str]] = []
        assert isinstance(way.channel, ConfirmationHints)
        unsubscribe = way.channel.subscribe_confirmations(lambda refs: hints.append(list(refs)))
        async with way.applicant.listening() as callback:
            _sent, message = await way.submit(callback=callback)
            outgoing = way.outgoing(message)
            result = await way.send(outgoing)
            assert result.outcome is SendOutcome.SENT
            (received,) = await way.applicant.wait_for(1)  # new-replies callback -> poll -> accept-reply
            assert received.accepted
        await eventually(lambda: hints, what="the reply-events callback reaching the channel")
        assert hints[0] == [result.reference]
        assert (await way.confirm(outgoing, result)).outcome is ConfirmOutcome.CONFIRMED
        unsubscribe()


async def test_confirm_of_an_unknown_or_inconsistent_reply_is_invalid(
    tmp_path: Path, fitconnect_shared: Path, fitconnect_applicant_key: ApplicantKey
) -> None:
    async with way_back(tmp_path, fitconnect_shared, fitconnect_applicant_key) as way:
        _sent, message = await way.submit()
        never_sent = way.outgoing(message)
        unknown = await way.channel.confirm(never_sent)
        assert unknown.outcome is ConfirmOutcome.INVALID
        assert "does not know reply" in unknown.reason

        outgoing = way.outgoing(message)
        result = await way.send(outgoing)
        desk = way.gw.sandbox.sandbox.replies
        reply = desk.reply(str(result.reference))
        desk.issue(reply, rp.SUBMIT_REPLY, {"authenticationTags": reply.tags})  # a second submit-reply
        broken = await way.confirm(outgoing, result)
        assert broken.outcome is ConfirmOutcome.INVALID
        assert "2 submit-reply events" in broken.reason


# -- upstream failures -----------------------------------------------------------------------------------


@asynccontextmanager
async def failing_zustelldienst(mode: str) -> AsyncIterator[str]:
    """A loopback stand-in that issues tokens and then answers every API call with ``mode``."""

    async def token(request: web.Request) -> web.Response:
        return web.json_response({"access_token": "t", "expires_in": 600, "token_type": "Bearer"})

    async def api(request: web.Request) -> web.Response:
        if mode == "hang":
            await asyncio.Event().wait()  # never answers: the client's timeout decides
        if mode == "429":
            return web.json_response({"type": "x", "title": "slow down"}, status=429, headers={"Retry-After": "7"})
        return web.json_response({"type": "x", "title": "down"}, status=503)

    app = web.Application()
    app.router.add_post("/token", token)
    app.router.add_route("*", "/v1/{tail:.*}", api)
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.1)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    try:
        yield f"http://127.0.0.1:{runner.addresses[0][1]}"
    finally:
        await runner.cleanup()


@pytest.mark.parametrize(("mode", "retry_after"), [("503", None), ("429", 7.0), ("hang", None)])
async def test_zustelldienst_5xx_and_timeouts_are_transient(
    tmp_path: Path,
    fitconnect_shared: Path,
    fitconnect_applicant_key: ApplicantKey,
    mode: str,
    retry_after: float | None,
) -> None:
    async with way_back(tmp_path, fitconnect_shared, fitconnect_applicant_key) as way:
        _sent, message = await way.submit()
        outgoing = way.outgoing(message)
        async with failing_zustelldienst(mode) as base:
            api = SubmissionApi(base_url=base, profile=PROFILES["v1"], timeout=0.3,
                                tokens_for=lambda s: TokenProvider(s, base + "/token", "c", "s"))  # fmt: skip
            way.channel.api = api
            try:
                result = await way.send(outgoing)
                pending = await way.channel.confirm(outgoing)
            finally:
                await api.close()
        assert result.outcome is SendOutcome.TRANSIENT, result.reason
        assert result.retry_after == retry_after
        assert result.reason.startswith("create-reply")
        assert pending.outcome is ConfirmOutcome.PENDING
