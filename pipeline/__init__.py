"""md2pr-experiment: the whole MD2PR experiment on one dataset as one resumable command, and its report."""
