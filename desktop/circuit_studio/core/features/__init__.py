"""Feature indexes: building and reading top activating contexts, corpora, search."""
