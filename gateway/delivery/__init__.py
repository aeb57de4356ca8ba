"""Delivery: leases, retries with backoff + jitter, dead letters; and upstream acknowledgements."""
