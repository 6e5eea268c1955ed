"""TLS credentials and rotation; Triton's restricted APIs."""
