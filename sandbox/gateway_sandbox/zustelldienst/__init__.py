"""A local FIT-Connect Zustelldienst ("sandbox"): Submission API v1 per OpenAPI 1.1.3, OAuth token
endpoint, ZSD-signed event log, HMAC callbacks, timers on a controllable clock, and an inspection
API for tests. See ``docs/sandbox.md``.
"""

from gateway_sandbox.zustelldienst.app import create_sandbox_app
from gateway_sandbox.zustelldienst.appkeys import SANDBOX
from gateway_sandbox.zustelldienst.clock import SandboxClock
from gateway_sandbox.zustelldienst.config import (
    CallbackConfig,
    CallbackPolicy,
    ClientConfig,
    DestinationConfig,
    Limits,
    Periods,
    SandboxConfig,
    ServiceConfig,
    SubmissionSchema,
    load_config,
)
from gateway_sandbox.zustelldienst.service import Sandbox

__all__ = [
    "SANDBOX",
    "CallbackConfig",
    "CallbackPolicy",
    "ClientConfig",
    "DestinationConfig",
    "Limits",
    "Periods",
    "Sandbox",
    "SandboxClock",
    "SandboxConfig",
    "ServiceConfig",
    "SubmissionSchema",
    "create_sandbox_app",
    "load_config",
]
