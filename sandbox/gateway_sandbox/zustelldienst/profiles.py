"""API generations the sandbox serves: v1 (OpenAPI 1.1.3, the baseline) and an optional v2 profile.

v2 follows the third-party evidence collected in the FIT-Connect digest (§2.10), not a published
specification: paths under ``/v2``, ``publicService`` instead of ``serviceType`` (and
``publicServices`` in destinations), ``200`` instead of ``202`` for the final submit, ``{submissionId,
caseId}`` from create, stricter JWE headers (``cty`` required for metadata and data, ``zip``
forbidden) and a required ``User-Agent`` (403 without, like the real bot detection).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Profile:
    name: str
    prefix: str
    service_field: str  # the service of a submission
    services_field: str  # the services of a destination
    submit_status: int
    strict_jwe_headers: bool
    require_user_agent: bool


V1 = Profile("v1", "/v1", "serviceType", "services", 202, strict_jwe_headers=False, require_user_agent=False)
V2 = Profile("v2", "/v2", "publicService", "publicServices", 200, strict_jwe_headers=True, require_user_agent=True)
PROFILES = {p.name: p for p in (V1, V2)}
