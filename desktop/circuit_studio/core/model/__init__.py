"""Loading local Hugging Face models offline, their per-family parts, recorded runs and memory plans."""
