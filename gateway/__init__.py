"""OZG integration gateway: FIT-Connect / XÖV intake → checks → routing → Fachverfahren adapters."""

__version__ = "0.1.0"
