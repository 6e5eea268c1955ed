"""Triton's GRPCInferenceService on grpc.aio."""
