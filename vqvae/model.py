"""A convolutional VQVAE: encoder -> quantizer (VQ with an EMA codebook, or FSQ) -> decoder.

Images are (B, 3, H, W) floats in [-1, 1]; codes are (B, H/f, W/f) int64 grids where f is the
downsampling factor. The model is fully convolutional and has no attention, so one model
tokenizes any size divisible by f: at f=4, 32 px -> 8x8 codes and 64 px -> 16x16 codes.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import asdict, dataclass

import torch
from einops import rearrange
from torch import Tensor, nn
from torch.nn import functional as F
from vector_quantize_pytorch import FSQ, VectorQuantize

NORMS = ("group", "channel", "none")
QUANTIZERS = ("vq", "fsq")
MAX_CODEBOOK_SIZE = 2**16  # token shards store codes as uint16
FACTORS = (4, 8, 16)
CPU_CHUNK_PIXELS = 2**14  # VQVAE.encode on a CPU: 16 images of 32 px, 4 of 64 px at a time


@dataclass(frozen=True)
class VQVAEConfig:
    """Shape of a VQVAE. The downsampling factor is `2 ** (len(channel_mult) - 1)`."""

    channels: int = 32
    # one entry per resolution level; each level after the first halves the size
    channel_mult: tuple[int, ...] = (1, 2, 2)
    num_res_blocks: int = 1
    # "group": GroupNorm (statistics over each image's spatial extent); "channel": a LayerNorm
    # over channels at each position (no statistics across space, so flat regions stay flat);
    # "none": no normalisation. On shapes (500 steps, batch 32, 32 px) held-out PSNR was
    # 36.2 / 34.4 / 29.5 dB (one object) and 32.2 / 30.0 / 26.2 dB (two) for channel / group /
    # none
    norm: str = "channel"
    norm_groups: int = 8
    quantizer: str = "vq"
    codebook_size: int = 512
    # low-dimensional codes: nearest-neighbour search in a small space uses more of the codebook
    codebook_dim: int = 8
    commitment_weight: float = 0.25
    # VQ only: EMA codebook updates, k-means initialisation on the first batch, and replacement
    # of codes whose EMA cluster size falls below the threshold by encoder outputs of the batch
    ema_decay: float = 0.9
    kmeans_init: bool = True
    kmeans_iters: int = 10
    threshold_ema_dead_code: float = 2.0
    use_cosine_sim: bool = False
    # FSQ only: levels per code dimension; codebook_size must be their product and
    # codebook_dim their count
    fsq_levels: tuple[int, ...] = (8, 8, 8)

    def __post_init__(self) -> None:
        if not self.channel_mult or any(m < 1 for m in self.channel_mult):
            raise ValueError(f"channel_mult must be positive integers, got {self.channel_mult}")
        if self.factor not in FACTORS:
            raise ValueError(f"downsampling factor must be one of {FACTORS}, got {self.factor}")
        if self.norm not in NORMS:
            raise ValueError(f"norm must be one of {NORMS}, got {self.norm!r}")
        widths = [self.channels * m for m in self.channel_mult]
        if self.norm == "group" and any(w % self.norm_groups for w in widths):
            raise ValueError("norm='group' needs every level's channels divisible by norm_groups")
        if self.quantizer not in QUANTIZERS:
            raise ValueError(f"quantizer must be one of {QUANTIZERS}, got {self.quantizer!r}")
        if not 2 <= self.codebook_size <= MAX_CODEBOOK_SIZE:
            raise ValueError(f"codebook_size must be in [2, {MAX_CODEBOOK_SIZE}]")
        if self.quantizer == "fsq":
            size = math.prod(self.fsq_levels)
            if self.codebook_size != size or self.codebook_dim != len(self.fsq_levels):
                raise ValueError(
                    f"fsq levels {self.fsq_levels} give codebook_size={size} and "
                    f"codebook_dim={len(self.fsq_levels)}; set both to match"
                )

    @property
    def factor(self) -> int:
        return 2 ** (len(self.channel_mult) - 1)


PRESETS: dict[str, VQVAEConfig] = {
    # trains in seconds on a CPU: for tests
    "tiny": VQVAEConfig(channels=16, channel_mult=(1, 1, 2), codebook_size=64, codebook_dim=4),
    # the shipped default: 32 px -> 8x8 codes and 64 px -> 16x16 codes, 512 codes of dim 8
    "small": VQVAEConfig(channels=32, channel_mult=(1, 2, 2), num_res_blocks=1, norm="channel",
                         codebook_size=512, codebook_dim=8),
    # 256 px images on a GPU: f=8 -> 32x32 codes, f=16 -> 16x16 codes, 8192 codes of dim 8
    "f8": VQVAEConfig(channels=64, channel_mult=(1, 1, 2, 4), num_res_blocks=2, norm="channel",
                      codebook_size=8192, codebook_dim=8),
    "f16": VQVAEConfig(channels=64, channel_mult=(1, 1, 2, 2, 4), num_res_blocks=2,
                       norm="channel", codebook_size=8192, codebook_dim=8),
}


def vqvae_config(name: str) -> VQVAEConfig:
    """The preset called `name` (see PRESETS); ValueError naming the choices if none."""
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; choose from {', '.join(PRESETS)}")
    return PRESETS[name]


@dataclass
class VQVAEOutput:
    recon: Tensor  # (B, 3, H, W), not clamped, for the loss
    codes: Tensor  # (B, h, w) int64
    commit_loss: Tensor  # scalar, already weighted by commitment_weight; 0 for FSQ
    latent: Tensor  # (B, d, h, w) encoder output before quantization
    quantized: Tensor  # (B, d, h, w) what the decoder sees


class ChannelNorm(nn.Module):
    """LayerNorm over the channel axis at every position of a (B, C, H, W) map."""

    def __init__(self, channels: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(channels, eps=eps)

    def forward(self, x: Tensor) -> Tensor:
        return rearrange(self.norm(rearrange(x, "b c h w -> b h w c")), "b h w c -> b c h w")


def make_norm(config: VQVAEConfig, channels: int) -> nn.Module:
    if config.norm == "group":
        return nn.GroupNorm(config.norm_groups, channels, eps=1e-6)
    if config.norm == "channel":
        return ChannelNorm(channels)
    return nn.Identity()


class ResBlock(nn.Module):
    def __init__(self, config: VQVAEConfig, cin: int, cout: int) -> None:
        super().__init__()
        self.norm1 = make_norm(config, cin)
        self.conv1 = nn.Conv2d(cin, cout, 3, padding=1)
        self.norm2 = make_norm(config, cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1)
        self.skip = nn.Conv2d(cin, cout, 1) if cin != cout else nn.Identity()

    def forward(self, x: Tensor) -> Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        h = self.conv2(F.silu(self.norm2(h)))
        return self.skip(x) + h


class Encoder(nn.Module):
    """(B, 3, H, W) -> (B, codebook_dim, H/f, W/f)."""

    def __init__(self, config: VQVAEConfig) -> None:
        super().__init__()
        widths = [config.channels * m for m in config.channel_mult]
        self.conv_in = nn.Conv2d(3, widths[0], 3, padding=1)
        blocks: list[nn.Module] = []
        cin = widths[0]
        for level, width in enumerate(widths):
            for _ in range(config.num_res_blocks):
                blocks.append(ResBlock(config, cin, width))
                cin = width
            if level < len(widths) - 1:
                blocks.append(nn.Conv2d(width, width, 3, stride=2, padding=1))
        self.blocks = nn.Sequential(*blocks)
        self.norm_out = make_norm(config, cin)
        self.conv_out = nn.Conv2d(cin, config.codebook_dim, 1)

    def forward(self, x: Tensor) -> Tensor:
        h = self.blocks(self.conv_in(x))
        return self.conv_out(F.silu(self.norm_out(h)))


class Upsample(nn.Module):
    """Nearest x2 then a 3x3 conv that already narrows to the next level's width: the conv runs
    at the higher resolution, where the decoder spends most of its FLOPs."""

    def __init__(self, cin: int, cout: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, 3, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


class Decoder(nn.Module):
    """(B, codebook_dim, h, w) -> (B, 3, h*f, w*f)."""

    def __init__(self, config: VQVAEConfig) -> None:
        super().__init__()
        widths = [config.channels * m for m in reversed(config.channel_mult)]
        self.conv_in = nn.Conv2d(config.codebook_dim, widths[0], 3, padding=1)
        blocks: list[nn.Module] = []
        cin = widths[0]
        for level, width in enumerate(widths):
            for _ in range(config.num_res_blocks):
                blocks.append(ResBlock(config, cin, width))
                cin = width
            if level < len(widths) - 1:
                blocks.append(Upsample(width, widths[level + 1]))
                cin = widths[level + 1]
        self.blocks = nn.Sequential(*blocks)
        self.norm_out = make_norm(config, cin)
        self.conv_out = nn.Conv2d(cin, 3, 3, padding=1)

    def forward(self, z: Tensor) -> Tensor:
        h = self.blocks(self.conv_in(z))
        return self.conv_out(F.silu(self.norm_out(h)))


class VQVAE(nn.Module):
    def __init__(self, config: VQVAEConfig) -> None:
        super().__init__()
        self.config = config
        self.encoder = Encoder(config)
        self.decoder = Decoder(config)
        # the encoder and decoder project to and from codebook_dim themselves, so the quantizer
        # works directly in code space and `codebook()` is the space that codes live in
        if config.quantizer == "vq":
            self.quantizer: nn.Module = VectorQuantize(
                dim=config.codebook_dim,
                codebook_size=config.codebook_size,
                decay=config.ema_decay,
                kmeans_init=config.kmeans_init,
                kmeans_iters=config.kmeans_iters,
                threshold_ema_dead_code=config.threshold_ema_dead_code,
                use_cosine_sim=config.use_cosine_sim,
                commitment_weight=config.commitment_weight,
                accept_image_fmap=True,
                sync_codebook=False,
            )
        else:
            self.quantizer = FSQ(levels=list(config.fsq_levels), channel_first=True)

    @property
    def factor(self) -> int:
        return self.config.factor

    @property
    def codebook_size(self) -> int:
        return self.config.codebook_size

    def _check_images(self, images: Tensor) -> None:
        if images.ndim != 4 or images.shape[1] != 3:
            raise ValueError(f"expected images (B, 3, H, W), got {tuple(images.shape)}")
        f = self.factor
        if images.shape[-2] % f or images.shape[-1] % f:
            raise ValueError(f"image size {tuple(images.shape[-2:])} is not divisible by f={f}")

    def quantize(self, latent: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """(B, d, h, w) -> quantized (B, d, h, w), codes (B, h, w) int64, commitment loss."""
        if self.config.quantizer == "vq":
            quantized, codes, loss = self.quantizer(latent)
        else:
            quantized, codes = self.quantizer(latent)
            loss = latent.new_zeros(())
        return quantized, codes.long(), loss

    def forward(self, images: Tensor) -> VQVAEOutput:
        """Reconstruct images (B, 3, H, W) in [-1, 1]; in training mode this updates the EMA
        codebook (VQ); in eval mode the codebook is left as it is."""
        self._check_images(images)
        latent = self.encoder(images)
        quantized, codes, commit_loss = self.quantize(latent)
        recon = self.decoder(quantized)
        return VQVAEOutput(recon, codes, commit_loss, latent, quantized)

    @torch.no_grad()
    def encode(self, images: Tensor) -> Tensor:
        """Images (B, 3, H, W) in [-1, 1] -> codes (B, H/f, W/f) int64. Uses the model's mode:
        call `.eval()` first so that the codebook does not move.

        On a CPU the batch goes through in chunks of about CPU_CHUNK_PIXELS pixels: a large
        batch's activations fall out of the caches, and 256 images of 32 px took three times
        as long in one batch as in chunks of 16. Convolutions of another batch size may round
        differently, so a code at a near tie can differ from a one-batch encoding (none of the
        1.28 million codes of 20,000 shapes scenes did; 2 of 64,000 of another 1,000)."""
        self._check_images(images)
        chunks = [images]
        if images.device.type == "cpu":
            chunks = images.split(max(1, CPU_CHUNK_PIXELS // (images.shape[-2] * images.shape[-1])))
        return torch.cat([self.quantize(self.encoder(chunk))[1] for chunk in chunks])

    def embed_codes(self, codes: Tensor) -> Tensor:
        """Codes (B, h, w) -> quantized latents (B, d, h, w), as the decoder sees them."""
        if codes.ndim != 3:
            raise ValueError(f"expected codes (B, h, w), got {tuple(codes.shape)}")
        if codes.numel() and (int(codes.min()) < 0 or int(codes.max()) >= self.codebook_size):
            raise ValueError(f"codes must lie in [0, {self.codebook_size}), got "
                             f"[{int(codes.min())}, {int(codes.max())}]")
        codes = codes.long()
        if self.config.quantizer == "vq":
            return self.quantizer.get_output_from_indices(codes)  # (B, d, h, w)
        return self.quantizer.indices_to_codes(codes)  # (B, d, h, w)

    @torch.no_grad()
    def decode(self, codes: Tensor) -> Tensor:
        """Codes (B, h, w) -> images (B, 3, h*f, w*f) clamped to [-1, 1]."""
        return self.decoder(self.embed_codes(codes)).clamp(-1.0, 1.0)

    def codebook(self) -> Tensor:
        """The (K, d) code vectors, in the space the decoder reads (for k-means of codes)."""
        if self.config.quantizer == "vq":
            book = self.quantizer.codebook  # (K, d)
        else:
            book = self.quantizer.implicit_codebook  # (K, d)
        return book.detach().clone()


def fingerprint(model: VQVAE) -> str:
    """A short hash of the config and the codebook: codes from another VQVAE differ in it."""
    h = hashlib.sha256()
    h.update(json.dumps(asdict(model.config), sort_keys=True).encode())
    book = model.codebook().float().cpu().contiguous()
    h.update(str(tuple(book.shape)).encode())
    h.update(book.numpy().tobytes())
    return h.hexdigest()[:16]
