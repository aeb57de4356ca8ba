"""The reply profile's shapes, the applicant's key (each refusal reason), the ReplyContext the source
builds from metadata, the channel's options and every refusal of ``suitable`` (no network)."""

from __future__ import annotations

import dataclasses
import json
import re
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import jsonschema
import pytest
from aiohttp import web
from cryptography.hazmat.primitives.asymmetric import rsa
from joserfc.jwk import RSAKey
from prometheus_client import CollectorRegistry

from gateway.channels.base import ChannelContext, ConfirmationHints, ReplyChannel
from gateway.channels.fitconnect.channel import FitConnectReplyChannel, create
from gateway.channels.fitconnect.options import parse_options
from gateway.channels.fitconnect.payload import attachment_ids_for, reply_id_for
from gateway.errors import ConfigError
from gateway.fitconnect import replies as rp
from gateway.fitconnect.callbacks import CALLBACK_NEW_EVENTS, sign_callback
from gateway.fitconnect.client import ApiError
from gateway.fitconnect.jose import b64url_decode, b64url_encode
from gateway.fitconnect.keys import jwk_from_public_key
from gateway.fitconnect.metadata import AttachmentSpec
from gateway.fitconnect.reply_key import REASONS, ReplyKeyError, validate_process_standards, validate_reply_key
from gateway.fitconnect.sets import parse_set, verify_set
from gateway.model import Answer, AnswerKind, BlobRef, Envelope, ReplyContext, RoutingKeys, SourceRef
from gateway.plugins import PluginHost
from gateway.sources.fitconnect.callback import callback_handler
from gateway.sources.fitconnect.reply_context import reply_context
from gateway.sources.fitconnect.subsystem import FitConnectMetrics
from gateway_sandbox.online_service.replies import ApplicantKey
from gateway_sandbox.zustelldienst.state import CaseRecord, EventRecord, ReplyRecord, SandboxState

REPO = Path(__file__).resolve().parents[2]
DOC = REPO / "docs" / "fitconnect-replies.md"
CASE = "0b0b0b0b-1111-4222-8333-444444444444"
DESTINATION = "7e4c1f2a-8d3b-4e5f-9a6b-0c1d2e3f4a5b"
STANDARD = "urn:xoev-de:bmk:standard:xbau_2.4"


@pytest.fixture(scope="module")
def key() -> ApplicantKey:
    return ApplicantKey.generate()


# -- the profile -----------------------------------------------------------------------------------------


def test_every_assumption_is_documented_with_its_source() -> None:
    doc = DOC.read_text(encoding="utf-8")
    rows = dict(re.findall(r"^\| `([a-z0-9-]+)` \| (confirmed|assumed) \|", doc, re.MULTILINE))
    assert set(rows) == rp.ASSUMPTION_KEYS
    for assumption in rp.ASSUMPTIONS:
        assert rows[assumption.key] == ("confirmed" if assumption.confirmed else "assumed"), assumption.key
        assert assumption.source
    confirmed = {a.key for a in rp.ASSUMPTIONS if a.confirmed}
    assert confirmed == {"reply-key-in-metadata", "process-standards-in-metadata", "reply-event-log",
                         "reply-event-names", "reply-subject"}  # fmt: skip


def test_bodies() -> None:
    assert rp.create_body(case_id=CASE, reply_id="r", announced_attachments=["a"]) == {
        "caseId": CASE, "replyId": "r", "announcedAttachments": ["a"]
    }  # fmt: skip
    assert rp.submit_body(encrypted_metadata="m", encrypted_data=None) == {"encryptedMetadata": "m"}
    assert rp.decision_body(rp.ACCEPT_REPLY, authentication_tags={"metadata": "t"}) == {
        "event": rp.ACCEPT_REPLY, "authenticationTags": {"metadata": "t"}
    }  # fmt: skip
    with pytest.raises(ValueError, match="authenticationTags"):
        rp.decision_body(rp.ACCEPT_REPLY)
    with pytest.raises(ValueError, match="at least one problem"):
        rp.decision_body(rp.REJECT_REPLY)
    with pytest.raises(ValueError, match="not a decision"):
        rp.decision_body(rp.SUBMIT_REPLY)
    reply_id = str(uuid.uuid4())
    body = rp.callback_body(rp.CALLBACK_NEW_REPLIES, [rp.reply_item(reply_id=reply_id.upper(), case_id=CASE,
                                                                   destination_id=DESTINATION)])  # fmt: skip
    garbage = {"replies": [{"replyId": "../etc"}, "x", {"replyId": 5}, *body["replies"]]}
    assert rp.callback_reply_ids(garbage) == [reply_id]
    assert rp.callback_reply_ids("nope") == []
    assert rp.path(rp.REPLY_ATTACHMENT, replyId="r", attachmentId="a") == "/replies/r/attachments/a"


def test_authentication_tags() -> None:
    tags = rp.authentication_tags(metadata="m", data="d", attachments={"ABC": "t"})
    assert tags == {"metadata": "m", "data": "d", "attachments": {"abc": "t"}}
    assert rp.tags_problem(tags) is None
    assert rp.same_tags(tags, {"metadata": "m", "data": "d", "attachments": {"ABC": "t"}})
    assert not rp.same_tags(tags, {"metadata": "m", "attachments": {"abc": "t"}})
    for broken, reason in (
        (None, "missing"),
        ({"data": "d"}, "no metadata tag"),
        ({"metadata": "m", "data": 1}, "data is not a string"),
        ({"metadata": "m", "attachments": []}, "attachments"),
    ):
        assert reason in (rp.tags_problem(broken) or ""), broken


def test_reply_sets_are_about_the_reply(key: ApplicantKey) -> None:
    signer = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    reply_id = str(uuid.uuid4())
    token = rp.reply_set(issuer="https://zsd.example", reply_id=reply_id, case_id=CASE, event=rp.SUBMIT_REPLY,
                         payload={"authenticationTags": {"metadata": "m"}}, key=signer, kid="zsd-signing")  # fmt: skip
    parsed = parse_set(token)
    assert (parsed.reply_id, parsed.submission_id, parsed.case_id, parsed.event) == (
        reply_id,
        None,
        CASE,
        rp.SUBMIT_REPLY,
    )
    assert parsed.claims["sub"] == f"reply:{reply_id}"
    verify_set(parsed, signer.public_key())


def test_reply_metadata_is_valid_metadata_2_1_0(fitconnect_shared: Path) -> None:
    schema = json.loads((fitconnect_shared / "metadata-2.1.0.schema.json").read_text())
    attachment = AttachmentSpec(str(uuid.uuid4()), "a" * 128, "application/pdf", filename="bescheid.pdf")
    metadata = rp.reply_metadata(data_sha512="b" * 128, process_standard=STANDARD, data_mime_type="application/xml",
                                 attachments=[attachment], sender_reference="answer-1")  # fmt: skip
    jsonschema.Draft202012Validator(schema, format_checker=jsonschema.FormatChecker()).validate(metadata)
    assert metadata["contentStructure"]["data"]["submissionSchema"] == {
        "schemaUri": STANDARD,
        "mimeType": "application/xml",
    }


def test_answer_document_and_destination_offer() -> None:
    doc = rp.answer_document(kind="status", bescheid=False, content={"status": "in Bearbeitung"})
    assert json.loads(doc) == {"kind": "status", "bescheid": False, "content": {"status": "in Bearbeitung"}}
    assert rp.destination_offer({}) is None
    assert rp.destination_offer({"replyChannels": {"eMail": {}}}) is None
    assert rp.destination_offer({"replyChannels": {"fitConnect": {}}}) == ()
    assert rp.destination_offer({"replyChannels": {"fitConnect": {"processStandards": [STANDARD, 3]}}}) == (STANDARD,)


def test_deterministic_ids() -> None:
    answer = make_answer(attachments=(blob("1"), blob("2")))
    assert reply_id_for("a") == reply_id_for("a") != reply_id_for("b")
    first = attachment_ids_for("a", answer)
    assert first == attachment_ids_for("a", answer)
    assert len(set(first)) == 2
    assert first != attachment_ids_for("b", answer)


# -- the applicant's key ---------------------------------------------------------------------------------


def test_a_good_key_and_its_thumbprint(key: ApplicantKey) -> None:
    checked = validate_reply_key(key.public_jwk)
    assert (checked.kid, checked.bits) == (key.kid, 4096)
    assert (
        checked.thumbprint
        == RSAKey.import_key({k: v for k, v in key.public_jwk.items() if k != "key_ops"}).thumbprint()
    )
    validate_reply_key({**key.public_jwk, "key_ops": ["wrapKey", "encrypt"], "use": "enc"})


def _weak(bits: int) -> dict[str, Any]:
    k = rsa.generate_private_key(public_exponent=65537, key_size=bits)
    return jwk_from_public_key(k.public_key(), kid="weak-key-1", alg="RSA-OAEP-256", key_ops=["wrapKey"], x5c=[])


@pytest.mark.parametrize(
    ("change", "code"),
    [
        (lambda j: "not a key", "not-an-object"),
        (lambda j: {**j, "d": "AQAB"}, "private-material"),
        (lambda j: {**j, "kty": "EC"}, "kty"),
        (lambda j: {k: v for k, v in j.items() if k != "kid"}, "kid"),
        (lambda j: {**j, "kid": "short"}, "kid"),
        (lambda j: {**j, "alg": "RSA-OAEP"}, "alg"),
        (lambda j: {**j, "alg": "PS512"}, "alg"),
        (lambda j: {**j, "key_ops": []}, "key_ops"),
        (lambda j: {**j, "key_ops": ["wrapKey", "verify"]}, "key_ops"),
        (lambda j: {**j, "key_ops": "wrapKey"}, "key_ops"),
        (lambda j: {**j, "use": "sig"}, "use"),
        (lambda j: {**j, "n": None}, "n-format"),
        (lambda j: {**j, "n": j["n"][:-3] + "!!!"}, "n-format"),
        (lambda j: {**j, "e": "AAEAAQ"}, "e"),
        (lambda j: _weak(2048), "n-size"),  # n has 342 characters
        (lambda j: {**_weak(2048), "n": b64url_encode(b"\0" * 256 + b64url_decode(_weak(2048)["n"]))}, "n-size"),
    ],
)
def test_each_refusal_reason(key: ApplicantKey, change: Any, code: str) -> None:
    with pytest.raises(ReplyKeyError) as info:
        validate_reply_key(change(dict(key.public_jwk)))
    assert info.value.code == code
    assert code in REASONS
    assert key.public_jwk["n"][:20] not in str(info.value)  # no key material in the reason


def test_process_standards() -> None:
    assert validate_process_standards([STANDARD, STANDARD, "https://x.example/s"]) == (STANDARD, "https://x.example/s")
    for bad in (None, [], ["not a uri"], [3], "urn:a:b"):
        with pytest.raises(ReplyKeyError):
            validate_process_standards(bad)


# -- ReplyContext from metadata -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("channel", "choice"),
    [
        ({"eMail": {"address": "a@b.de"}}, "eMail"),
        ({"deMail": {"address": "a@b.de-mail.de"}}, "deMail"),
        ({"fink": {"finkPostfachRef": "hh/by/1"}}, "fink"),
        ({"elster": {"accountId": "1234567890"}}, "elster"),
        ({"idBundDeMailbox": {"mailboxUuid": CASE}}, "idBundDeMailbox"),
        ({"fitConnect": {"processStandards": [STANDARD]}}, "fitConnect"),
        ({"eMail": {}, "deMail": {}}, None),  # not exactly one
        ({"carrierPigeon": {}}, None),
        (None, None),
    ],
)
def test_reply_context_choice(channel: Any, choice: str | None) -> None:
    metadata = {} if channel is None else {"replyChannel": channel}
    ctx = reply_context(metadata, case_id=CASE, destination_id=DESTINATION)
    assert (ctx.source_type, ctx.choice, ctx.case, ctx.destination) == ("fitconnect", choice, CASE, DESTINATION)
    assert ctx.details == ((channel or {}).get(choice, {}) if choice else {})


def test_reply_context_key_consent_and_application_id(key: ApplicantKey) -> None:
    application_id = str(uuid.uuid4()).upper()
    metadata = {
        "replyChannel": key.reply_channel([STANDARD]),
        "additionalReferenceInfo": {"zustimmungZumDigitalenBescheid": False, "idBundDeApplicationId": application_id},
    }
    ctx = reply_context(metadata, case_id=CASE, destination_id=DESTINATION)
    assert ctx.details["encryptionPublicKeyThumbprint"] == key.private.thumbprint
    assert (ctx.consent_digital_bescheid, ctx.application_id) == (False, application_id.lower())
    assert ReplyContext.from_dict(json.loads(json.dumps(ctx.as_dict()))) == ctx  # survives the store's JSON
    weak = reply_context({"replyChannel": {"fitConnect": {"encryptionPublicKey": {"kty": "RSA"}}}}, case_id=CASE,
                         destination_id=DESTINATION)  # fmt: skip
    assert "encryptionPublicKeyThumbprint" not in weak.details
    assert reply_context(None, case_id=CASE, destination_id=DESTINATION).consent_digital_bescheid is None


# -- the channel's options, registration and refusals ------------------------------------------------------


def test_options() -> None:
    opts = parse_options({"source": "fc", "process_standards": [STANDARD]})
    assert (opts.source, opts.process_standards, opts.confirm_interval) == ("fc", (STANDARD,), 300.0)
    for raw, key in (
        ({"process_standards": [STANDARD]}, "source"),
        ({"source": "fc"}, "process_standards"),
        ({"source": "fc", "process_standards": ["nope"]}, "process_standards"),
        ({"source": "fc", "process_standards": [STANDARD], "confirm_interval": 0}, "confirm_interval"),
        ({"source": "fc", "process_standards": [STANDARD], "colour": "red"}, "colour"),
    ):
        with pytest.raises(ConfigError) as info:
            parse_options(raw)
        assert info.value.key == key


def test_registered_through_the_hook_and_sources_are_checked() -> None:
    host = PluginHost.load()
    channel_type = host.reply_channel_types["fitconnect"]
    info = next(i for i in host.infos if i.reply_channel_types)
    assert info.reply_channel_types == ("fitconnect",)
    assert host.pm.hook.gateway_reply_channel_types.get_hookimpls()
    ctx = ChannelContext(name="r", base_dir=REPO, resolve_secret=lambda raw, key: None, production=False,
                         sources={"xoev": object()})  # fmt: skip
    for source, reason in (("nope", "no source 'nope' (fitconnect sources: none)"), ("xoev", "not of type fitconnect")):
        with pytest.raises(ConfigError, match=re.escape(reason)) as info_:
            channel_type.create(ctx, {"source": source, "process_standards": [STANDARD]})
        assert info_.value.key == "source"
    assert channel_type.create is create


@dataclass
class FakeDestination:
    document: dict[str, Any] | None

    async def get(self) -> dict[str, Any]:
        if self.document is None:
            raise ApiError("get-destination", "unreachable")
        return self.document


@dataclass
class FakeSource:
    """What the channel uses of a FitConnectSource, without a Zustelldienst."""

    destination: FakeDestination
    name: str = "fc"
    api: Any = None
    keys: Any = None
    listeners: list[Any] = field(default_factory=list)

    @property
    def options(self) -> Any:
        return type("O", (), {"destination_id": DESTINATION})()

    def subscribe_reply_events(self, listener: Any) -> Any:
        self.listeners.append(listener)
        return lambda: self.listeners.remove(listener)


def blob(name: str, media_type: str = "application/pdf") -> BlobRef:
    return BlobRef(name=f"attachment:{name}", blob_id=name * 128, sha512=name * 128, size=1, media_type=media_type)


def make_answer(**changes: Any) -> Answer:
    return Answer(id="a1", message_id="m1", kind=AnswerKind.REPLY, caller="t", idempotency_key="k",
                  created_at=datetime.now(UTC), **changes)  # fmt: skip


def make_message(reply: ReplyContext | None, channel: str = "fc") -> Envelope:
    return Envelope(id="m1", source=SourceRef(channel, "fitconnect", "s", "s", CASE), received_at=datetime.now(UTC),
                    routing=RoutingKeys(), reply=reply)  # fmt: skip


def fitconnect_context(key: ApplicantKey, standards: Any = (STANDARD,), **details: Any) -> ReplyContext:
    ctx = reply_context({"replyChannel": key.reply_channel(list(standards))}, case_id=CASE, destination_id=DESTINATION)
    return dataclasses.replace(ctx, details={**ctx.details, **details}) if details else ctx


def channel(document: dict[str, Any] | None = None) -> tuple[FitConnectReplyChannel, FakeSource]:
    offer = {"replyChannels": {"fitConnect": {"processStandards": [STANDARD]}}}
    source = FakeSource(FakeDestination(offer if document is None else document))
    return FitConnectReplyChannel("r", parse_options({"source": "fc", "process_standards": [STANDARD]}), source), source  # type: ignore[arg-type]


async def test_suitable_refusals(key: ApplicantKey) -> None:
    ch, _source = channel()
    assert isinstance(ch, ReplyChannel)
    assert isinstance(ch, ConfirmationHints)
    good = fitconnect_context(key)
    assert await ch.suitable(make_message(good), make_answer()) is None
    other = dataclasses.replace(good, choice="eMail", details={"address": "a@b.de"})
    refusals = [
        (make_message(None), make_answer(), "did not come in by the FIT-Connect source fc"),
        (make_message(good, channel="other"), make_answer(), "did not come in by the FIT-Connect source fc"),
        (make_message(ReplyContext("xoev-http", choice="fitConnect")), make_answer(), "did not come in by"),
        (make_message(ReplyContext("fitconnect", case=CASE)), make_answer(), "the applicant chose no reply channel"),
        (make_message(other), make_answer(), "chose the reply channel eMail, not fitConnect"),
        (make_message(dataclasses.replace(good, case=None)), make_answer(), "no FIT-Connect case id"),
        (make_message(fitconnect_context(key, encryptionPublicKey={**key.public_jwk, "alg": "RSA1_5"})), make_answer(),
         "reply key is not usable (alg: alg is not RSA-OAEP-256)"),
        (make_message(fitconnect_context(key, encryptionPublicKeyThumbprint="pinned-to-another")), make_answer(),
         "differs from the one recorded at intake"),
        (make_message(fitconnect_context(key, processStandards="urn:a:b")), make_answer(),
         "process standards are not usable"),
        (make_message(fitconnect_context(key, ["urn:a:b"])), make_answer(), "(urn:a:b) do not intersect"),
        (make_message(good), make_answer(data=blob("d", "application/pdf")),
         "the answer's data is application/pdf; FIT-Connect reply data must be JSON or XML"),
    ]  # fmt: skip
    for message, answer, reason in refusals:
        got = await ch.suitable(message, answer)
        assert got is not None
        assert reason in got, (reason, got)
    for document in ({}, {"replyChannels": {"eMail": {}}}):
        ch, _ = channel(document)
        assert await ch.suitable(make_message(good), make_answer()) == (
            f"the destination {DESTINATION} does not offer the fitConnect reply channel"
        )
    unreachable, _ = channel()
    unreachable.source.destination = FakeDestination(None)  # type: ignore[assignment]
    assert await unreachable.suitable(make_message(good), make_answer()) is None  # the configuration stands


async def test_confirmation_hints_are_passed_on_and_unsubscribed(key: ApplicantKey) -> None:
    ch, source = channel()
    heard: list[list[str]] = []
    unsubscribe = ch.subscribe_confirmations(heard.append)
    ch.subscribe_confirmations(lambda refs: 1 / 0)  # a broken listener does not stop the others
    (listener,) = source.listeners
    listener(["r1"])
    assert heard == [["r1"]]
    unsubscribe()
    listener(["r2"])
    assert heard == [["r1"]]
    await ch.close()
    assert source.listeners == []


# -- the destination's callback endpoint and the sandbox's persisted reply state --------------------------


async def test_reply_event_callbacks_reach_the_listeners(aiohttp_client: Any) -> None:
    secret = "destination-callback-secret-" + "x" * 32
    heard: list[list[str]] = []
    polls: list[int] = []
    handler = callback_handler(
        name="fc",
        secret=secret,
        metrics=FitConnectMetrics(CollectorRegistry()),
        trigger=lambda: polls.append(1),
        on_reply_events=lambda ids: heard.append(list(ids)),
        clock=lambda: 1_700_000_000.0,
    )
    app = web.Application()
    app.router.add_post("/cb", handler)
    client = await aiohttp_client(app)
    reply_id = str(uuid.uuid4())

    async def post(body: dict[str, Any], key: str = secret) -> int:
        raw = json.dumps(body).encode()
        headers = {"callback-timestamp": "1700000000", "callback-authentication": sign_callback(key, raw, 1700000000)}
        resp = await client.post("/cb", data=raw, headers=headers)
        return resp.status

    item = rp.reply_item(reply_id=reply_id, case_id=CASE, destination_id=DESTINATION)
    assert await post(rp.callback_body(rp.CALLBACK_REPLY_EVENTS, [item])) == 200
    assert await post({"type": CALLBACK_NEW_EVENTS, "submissions": []}) == 200  # about submissions: no hint
    assert await post(rp.callback_body(rp.CALLBACK_REPLY_EVENTS, [item]), key="wrong" * 8) == 401
    assert heard == [[reply_id]]
    assert polls == []


def test_reply_state_survives_a_sandbox_restart() -> None:
    state = SandboxState()
    reply = ReplyRecord(
        id=str(uuid.uuid4()),
        case_id=CASE,
        destination_id=DESTINATION,
        client_id="c",
        announced=["a"],
        created_at=1.0,
        status="submitted",
        uploaded=["a"],
        tags={"metadata": "m"},
    )
    state.replies[reply.id] = reply
    state.received[reply.id] = {"decision": "accept-reply"}
    state.cases[CASE] = CaseRecord(
        CASE, DESTINATION, [EventRecord("t", None, rp.SUBMIT_REPLY, "j", "i", 1.0, reply.id)]
    )
    again = SandboxState.from_json(json.loads(json.dumps(state.to_json())))
    assert again.replies == state.replies
    assert again.received == state.received
    assert again.reply_events(reply.id) == state.reply_events(reply.id)
    old = state.to_json()
    del old["replies"], old["received"]  # a state file from before replies existed
    assert SandboxState.from_json(old).replies == {}
