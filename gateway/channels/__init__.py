"""Reply channels: how an answer from a Fachverfahren reaches the applicant (the way back)."""
