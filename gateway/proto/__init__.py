"""Generated protobuf modules (by `make protos` from protos/*.proto). Do not edit the *_pb2 files."""
