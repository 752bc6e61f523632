"""CogView toolkit: token-based text-to-image with a VQVAE, one vocabulary and a CogLM.

The front door is `CogView` (`cogview.api`): `CogView.from_pretrained("shapes")`, then
`generate`, `inpaint`, `caption` and `superres`.
"""

from typing import Any

__version__ = "0.1.0"
__all__ = ["CogView"]


def __getattr__(name: str) -> Any:
    # imported on first use, so that `cogview --help` does not load torch
    if name == "CogView":
        from cogview.api import CogView

        return CogView
    raise AttributeError(f"module 'cogview' has no attribute {name!r}")
