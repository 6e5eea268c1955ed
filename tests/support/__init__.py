"""Test plumbing shared by the layers: model builders, certificates, fakes, raw clients."""
