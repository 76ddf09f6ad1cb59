"""Training: configuration and recipes, optimisation, distributed helpers, checkpoints, the loop."""
