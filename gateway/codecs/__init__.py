"""Tensors to and from bytes and JSON; encoded images to tensors."""
