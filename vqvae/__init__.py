"""The image tokenizer: a convolutional VQVAE that turns images into grids of discrete codes."""
