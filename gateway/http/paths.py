"""Who serves which public HTTP path: channels claim theirs while their options are read, so two
sources on one path (aiohttp would silently serve the first) or a channel on the gateway's own
endpoints is a configuration error at its key, found by ``gateway check-config`` too."""

from __future__ import annotations

from gateway.options import At

RESERVED_PREFIXES = ("/admin", "/healthz", "/readyz", "/metrics")


class HttpPaths:
    RESOURCE = "http_paths"  # its name in gateway.options.ReadContext.resources

    def __init__(self) -> None:
        self.owners: dict[str, str] = {}

    def claim(self, path: str, owner: str, at: At | None = None) -> str | None:
        """Claim ``path`` for ``owner``; the reason it cannot be had (also reported at ``at``), else None."""
        problem = None
        if any(path == p or path.startswith(p + "/") for p in RESERVED_PREFIXES):
            problem = f"{path} collides with the gateway's own endpoints"
        else:
            current = self.owners.setdefault(path, owner)
            if current != owner:
                problem = f"{path} is already the path of source {current!r}"
        if problem and at is not None:
            at.error(problem)
        return problem
