"""FIT-Connect XML data whose schemaUri is an XÖV namespace goes through the gateway's XÖV schema
registry ([xoev]), the same registry and hardened worker pool the XÖV HTTP intake uses."""

from __future__ import annotations

from pathlib import Path

from lxml import etree

from gateway.fitconnect.problems import PROBLEM_PREFIX
from gateway.model import MessageState
from gateway_sandbox.zustelldienst.config import ServiceConfig, SubmissionSchema

from .subscriber_helpers import ACCEPT, REJECT, Gateway, e2e

XDOMEA_NS = "urn:xoev-de:xdomea:schema:3.0.0"
XDOMEA_SERVICE = "urn:de:fim:leika:leistung:99000000000042"
SAMPLE = "xdomea-3.0.0/samples/xx_Aussonderung.Anbieteverzeichnis.0501.xml"


def _offer_xdomea(gw: Gateway, xoev_shared: Path, tmp_path: Path) -> None:
    sandbox = gw.sandbox.sandbox
    dest = sandbox.destination(gw.sandbox.destination_id)
    service = ServiceConfig(XDOMEA_SERVICE, ("DE09162000",), (SubmissionSchema(XDOMEA_NS, "application/xml"),))
    sandbox.update_destination(dest.id, services=(*dest.services, service))
    gw.routes += f"""
[xoev]
cache_dir = "{tmp_path / "xoev-cache"}"
workers = 1
[[xoev.bundles]]
name = "xdomea-3.0.0"
dir = "{xoev_shared / "xdomea-3.0.0"}"
entries = ["schemes/xdomea_3.0.0/xdomea.xsd"]
"""


async def test_xdomea_data_valid_invalid_and_foreign(
    tmp_path: Path, fitconnect_shared: Path, xoev_shared: Path
) -> None:
    valid = (xoev_shared / SAMPLE).read_bytes()
    tree = etree.fromstring(valid)
    # A required child of the header removed: schema-invalid, still well-formed.
    kopf = tree.find(f"{{{XDOMEA_NS}}}Kopf")
    assert kopf is not None
    kopf.remove(kopf[0])
    invalid = etree.tostring(tree, xml_declaration=True, encoding="UTF-8")
    foreign = b'<?xml version="1.0" encoding="UTF-8"?><Antrag xmlns="urn:example:other"><x/></Antrag>'

    async with e2e(tmp_path, fitconnect_shared, start=False) as gw:
        _offer_xdomea(gw, xoev_shared, tmp_path)
        await gw.start()
        runtime = gw.runtime
        assert runtime is not None

        sent_ok = await gw.send(service=XDOMEA_SERVICE, data=valid, schema=XDOMEA_NS, mime="application/xml")
        assert (await gw.outcome(sent_ok)).event == ACCEPT
        stored = await gw.wait_stored(sent_ok.submission_id, [MessageState.ACKNOWLEDGED])
        assert stored.envelope.data is not None

        for data, says in (
            (invalid, "data violates its XÖV schema: rule"),
            (foreign, "not in the declared schema's namespace"),
        ):
            sent = await gw.send(service=XDOMEA_SERVICE, data=data, schema=XDOMEA_NS, mime="application/xml")
            outcome = await gw.outcome(sent)
            assert outcome.event == REJECT
            problems = outcome.payload["problems"]
            assert [(p["type"], p.get("instance")) for p in problems] == [
                (PROBLEM_PREFIX + "schema-violation", "data")
            ], problems
            assert says in problems[0]["detail"]  # rule and place only, never values from the document
