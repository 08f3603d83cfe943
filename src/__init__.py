"""ENAS micro search in TensorFlow 2."""
