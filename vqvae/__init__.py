"""The image tokenizer: a convolutional VQVAE that turns images into grids of discrete codes."""

from vqvae.model import PRESETS, VQVAE, VQVAEConfig, VQVAEOutput, fingerprint, vqvae_config

__all__ = ["PRESETS", "VQVAE", "VQVAEConfig", "VQVAEOutput", "fingerprint", "vqvae_config"]
