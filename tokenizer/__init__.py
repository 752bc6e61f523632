"""The unified vocabulary: special and task tokens, text BPE, image codes."""
