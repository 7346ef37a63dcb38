"""Tokenvault service: format-preserving tokenization over gRPC."""
