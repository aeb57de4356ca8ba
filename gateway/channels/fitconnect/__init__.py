"""The ``fitconnect`` reply channel: answers to the applicant over the FIT-Connect reply API.

Wire shapes: :mod:`gateway.fitconnect.replies` (the profile); docs: ``docs/fitconnect-replies.md``.
"""
