"""The training engine: the per-worker GAN loop, its state, and the Ray Train launcher."""
