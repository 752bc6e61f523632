"""Data, training loops and DeepSpeed glue for the VQVAE, CogLM and super-resolution models."""
