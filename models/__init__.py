"""Models and their training and metrics, shared by silos, baselines and simulations."""
