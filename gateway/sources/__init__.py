"""Source (inbound channel) contract. Types come from plugins; instances from gateway.toml."""
