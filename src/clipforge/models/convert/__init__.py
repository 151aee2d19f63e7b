"""Converters of released checkpoints into this project's modules (key layouts read from the official code)."""
