"""OpenVINO: read, reshape, preprocess, compile, and run on a pool of infer requests."""
