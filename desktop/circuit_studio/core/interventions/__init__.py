"""Feature interventions and steering (circuit-tracer's semantics)."""
