"""Memory that requests use: Triton's shared-memory regions."""
