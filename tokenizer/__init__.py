"""The unified vocabulary: special and task tokens, text BPE, image codes."""

from tokenizer.unified import (
    SPECIAL_TOKENS,
    TASKS,
    TextTruncatedWarning,
    TokenizerError,
    UnifiedTokenizer,
)

__all__ = [
    "SPECIAL_TOKENS",
    "TASKS",
    "TextTruncatedWarning",
    "TokenizerError",
    "UnifiedTokenizer",
]
