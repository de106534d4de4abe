"""Attribution graphs: the algorithm, the frozen model's transpose, targets, per-head splits."""
