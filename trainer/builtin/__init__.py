"""builtin:tiny, the small model built on the spot so that the whole loop runs on a CPU."""
