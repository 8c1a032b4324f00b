"""diffusion_nera (placeholder docstring)."""
