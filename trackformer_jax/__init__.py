"""Trackformer-JAX: unsupervised music source separation with Performers and MixIT."""

__version__ = "0.1.0"
