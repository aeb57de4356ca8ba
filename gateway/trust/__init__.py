"""Certificate trust: path validation (``cryptography.x509.verification``), revocation from CRL files
and OCSP, expiry information. Used for the x5c chains of FIT-Connect keys and for XMLDSig signing
certificates; see docs/hostile-input.md ("Certificates")."""
