"""Training: the pieces every trainer shares (LR schedule, budgets, noising, loss weights, EMA, checkpoints)."""
