"""Submission API profiles: v1 (spec 1.1.3, the documented baseline) and v2 (digest §2.10, third-party evidence).

Only what differs between the generations lives here, so the rest of the subscriber is written once:
path prefix, the name of the service field in a submission (``serviceType`` → ``publicService``),
the name of the service list in a destination (``services`` → ``publicServices``) and the status a
sender's final submit answers with (202 → 200; the subscriber only documents it).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any


@dataclass(frozen=True, slots=True)
class ApiProfile:
    name: str
    prefix: str  # "/v1"
    submission_service_field: str  # the service of a Submission
    destination_services_field: str  # the services of a Destination
    submit_status: int  # what PUT /submissions/{id} answers (sender side; kept for completeness)

    def submission_service(self, submission: Mapping[str, Any]) -> Any:
        value = submission.get(self.submission_service_field)
        if value is None and self.name != "v1":
            value = submission.get("serviceType")  # tolerate v1 naming on v2 hosts
        return value

    def destination_services(self, destination: Mapping[str, Any]) -> Any:
        value = destination.get(self.destination_services_field)
        if value is None and self.name != "v1":
            value = destination.get("services")
        return value


PROFILES: Mapping[str, ApiProfile] = MappingProxyType(
    {
        "v1": ApiProfile("v1", "/v1", "serviceType", "services", 202),
        "v2": ApiProfile("v2", "/v2", "publicService", "publicServices", 200),
    }
)
