"""Frozen-encoder features (features.h5): the input of prototypes, the knowledge base and fast training."""
