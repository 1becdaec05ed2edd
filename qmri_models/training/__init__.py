"""Training of the networks on simulated data: data recipes, loops with checkpoints and resume."""
