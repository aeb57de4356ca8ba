"""The online service's side of FIT-Connect, for tests and the demo: submits applications to a Zustelldienst."""
