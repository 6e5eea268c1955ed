"""The Open Inference Protocol's REST API and binary tensor extension on aiohttp."""
