"""Measuring samples: an MNIST classifier with a "not a digit" class, and the scores built on it."""
