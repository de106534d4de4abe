"""Circuit Studio: attribution graphs for local language models and their transcoders."""

__version__ = "0.1.0"
