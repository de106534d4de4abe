"""Transcoder sets: the maths, the on-disk formats released sets use, loading, writing, training."""
