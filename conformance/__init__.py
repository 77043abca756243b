"""Conformance suite for bn_portable: case catalogue, TensorFlow golden generator, goldens."""
