"""Pipeline: intake (durable store) → checks → routing → delivery queue."""
