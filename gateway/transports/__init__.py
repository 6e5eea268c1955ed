"""The wire: gRPC and REST, translating to and from the dataplane's records."""
