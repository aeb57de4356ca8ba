"""FIT-Connect: JOSE profile, keys, Security Event Tokens, callbacks, metadata, test sender, sandbox."""
