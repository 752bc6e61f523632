"""CogView toolkit: token-based text-to-image with a VQVAE, one vocabulary and a CogLM."""

__version__ = "0.1.0"
