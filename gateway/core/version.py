"""The gateway's release, as servers report it (server metadata, the OpenAPI document)."""

__version__ = "0.1.0"
