"""The gateway's development companion (distribution ``ozg-gateway-sandbox``), kept out of production images.

* :mod:`gateway_sandbox.zustelldienst`: a local FIT-Connect Zustelldienst (Submission API v1) on loopback;
* :mod:`gateway_sandbox.online_service`: the test online service (sender) that submits applications;
* :mod:`gateway_sandbox.demo`: ``gateway demo``, the round trip on one machine;
* :mod:`gateway_sandbox.testing`: the test kit for vendors (a pytest plugin, loaded automatically).

It plugs into the gateway through the same ``gateway`` entry-point group as any vendor package
(:mod:`gateway_sandbox.plugin` adds the ``sandbox`` and ``demo`` commands).
"""

__version__ = "0.1.0"
