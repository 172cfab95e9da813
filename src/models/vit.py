"""Vision Transformer laid out as in the DINO release (facebookresearch/dino, vision_transformer.py).

Module and parameter names equal DINO's (patch_embed.proj, cls_token, pos_embed, blocks.i.{norm1,
attn.qkv, attn.proj, norm2, mlp.fc1, mlp.fc2}, norm), so the released checkpoints load unchanged.
`forward(x)` returns the CLS token after the final LayerNorm, (B, embed_dim).

Differences from the release, none of which changes the arithmetic:
- attention uses `F.scaled_dot_product_attention` (same softmax(q k^T * scale) v, fused);
- the position-embedding interpolation runs in float32 and validates the input size.
"""

from __future__ import annotations

from typing import Sequence, Union

import torch
import torch.nn as nn
import torch.nn.functional as F

from .init import dino_linear_init


def drop_path(x: torch.Tensor, drop_prob: float = 0.0, training: bool = False) -> torch.Tensor:
    """Stochastic depth per sample (DINO's `drop_path`): zero a sample's residual branch with
    probability drop_prob and scale the kept ones by 1 / (1 - drop_prob). Identity when not training."""
    if drop_prob == 0.0 or not training:
        return x
    keep_prob = 1 - drop_prob
    shape = (x.shape[0],) + (1,) * (x.ndim - 1)
    mask = (keep_prob + torch.rand(shape, dtype=x.dtype, device=x.device)).floor_()
    return x.div(keep_prob) * mask


class DropPath(nn.Module):
    """Module wrapper of `drop_path` (active in training mode only)."""

    def __init__(self, drop_prob: float = 0.0) -> None:
        super().__init__()
        self.drop_prob = drop_prob

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return drop_path(x, self.drop_prob, self.training)

    def extra_repr(self) -> str:
        return f"drop_prob={self.drop_prob}"


class Mlp(nn.Module):
    """fc1 -> GELU -> dropout -> fc2 -> dropout."""

    def __init__(self, in_features: int, hidden_features: int, drop: float = 0.0) -> None:
        super().__init__()
        self.fc1 = nn.Linear(in_features, hidden_features)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden_features, in_features)
        self.drop = nn.Dropout(drop)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.drop(self.fc2(self.drop(self.act(self.fc1(x)))))


class Attention(nn.Module):
    """Multi-head self-attention with a fused qkv projection (DINO's `Attention`)."""

    def __init__(
        self,
        dim: int,
        num_heads: int,
        qkv_bias: bool = False,
        qk_scale: float | None = None,
        attn_drop: float = 0.0,
        proj_drop: float = 0.0,
    ) -> None:
        super().__init__()
        if dim % num_heads != 0:
            raise ValueError(f"embedding dim {dim} is not divisible by num_heads {num_heads}")
        self.num_heads = num_heads
        self.scale = qk_scale or (dim // num_heads) ** -0.5
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        self.attn_drop = attn_drop
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(proj_drop)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, N, C = x.shape
        qkv = self.qkv(x).reshape(B, N, 3, self.num_heads, C // self.num_heads).permute(2, 0, 3, 1, 4)
        q, k, v = qkv[0], qkv[1], qkv[2]
        x = F.scaled_dot_product_attention(
            q, k, v, dropout_p=self.attn_drop if self.training else 0.0, scale=self.scale
        )
        x = x.transpose(1, 2).reshape(B, N, C)
        return self.proj_drop(self.proj(x))


class Block(nn.Module):
    """Pre-norm transformer block: x + DropPath(Attn(LN(x))), then x + DropPath(MLP(LN(x)))."""

    def __init__(
        self,
        dim: int,
        num_heads: int,
        mlp_ratio: float = 4.0,
        qkv_bias: bool = False,
        qk_scale: float | None = None,
        drop: float = 0.0,
        attn_drop: float = 0.0,
        drop_path: float = 0.0,
        norm_eps: float = 1e-6,
    ) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=norm_eps)
        self.attn = Attention(dim, num_heads, qkv_bias, qk_scale, attn_drop, drop)
        self.drop_path = DropPath(drop_path) if drop_path > 0.0 else nn.Identity()
        self.norm2 = nn.LayerNorm(dim, eps=norm_eps)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), drop)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.drop_path(self.attn(self.norm1(x)))
        return x + self.drop_path(self.mlp(self.norm2(x)))


class PatchEmbed(nn.Module):
    """Non-overlapping patches -> linear embedding (a conv with kernel = stride = patch_size)."""

    def __init__(self, img_size: int = 224, patch_size: int = 16, in_chans: int = 3, embed_dim: int = 768) -> None:
        super().__init__()
        self.img_size = img_size
        self.patch_size = patch_size
        self.grid_size = img_size // patch_size
        self.num_patches = self.grid_size * self.grid_size
        self.proj = nn.Conv2d(in_chans, embed_dim, kernel_size=patch_size, stride=patch_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x).flatten(2).transpose(1, 2)


class VisionTransformer(nn.Module):
    """DINO's VisionTransformer without classifier: forward(x) -> CLS token after the final norm.

    Args:
        img_size: native (square) training resolution; fixes the size of `pos_embed`. Other
            input sizes use a bicubic interpolation of the position embedding. An int, or a
            one-element sequence as DINO passes it ([224]).
        patch_size: patch side in pixels.
        drop_path_rate: stochastic depth, rising linearly from 0 (first block) to this value
            (last block).
    """

    def __init__(
        self,
        img_size: Union[int, Sequence[int]] = 224,
        patch_size: int = 16,
        in_chans: int = 3,
        embed_dim: int = 768,
        depth: int = 12,
        num_heads: int = 12,
        mlp_ratio: float = 4.0,
        qkv_bias: bool = False,
        qk_scale: float | None = None,
        drop_rate: float = 0.0,
        attn_drop_rate: float = 0.0,
        drop_path_rate: float = 0.0,
        norm_eps: float = 1e-6,
    ) -> None:
        super().__init__()
        if not isinstance(img_size, int):
            img_size = int(img_size[0])
        if patch_size < 1 or img_size < patch_size:
            raise ValueError(f"need 1 <= patch_size <= img_size, got patch_size={patch_size}, img_size={img_size}")
        self.num_features = self.embed_dim = embed_dim
        self.patch_embed = PatchEmbed(img_size, patch_size, in_chans, embed_dim)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, self.patch_embed.num_patches + 1, embed_dim))
        self.pos_drop = nn.Dropout(p=drop_rate)
        # stochastic depth decay rule (DINO); computed on the CPU so that meta-device builds work
        rates = torch.linspace(0, drop_path_rate, depth, device="cpu").tolist()
        self.blocks = nn.ModuleList(
            Block(embed_dim, num_heads, mlp_ratio, qkv_bias, qk_scale, drop_rate, attn_drop_rate, rates[i], norm_eps)
            for i in range(depth)
        )
        self.norm = nn.LayerNorm(embed_dim, eps=norm_eps)

        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        nn.init.trunc_normal_(self.cls_token, std=0.02)
        self.apply(self._init_weights)

    @staticmethod
    def _init_weights(m: nn.Module) -> None:
        dino_linear_init(m)
        if isinstance(m, nn.LayerNorm):
            nn.init.constant_(m.bias, 0)
            nn.init.constant_(m.weight, 1.0)

    def interpolate_pos_encoding(self, height: int, width: int) -> torch.Tensor:
        """Position embedding (1, 1 + h0 * w0, D) for an input of height x width pixels.

        DINO's arithmetic: the native grid of patch embeddings is resized bicubically with
        scale factors ((h0 + 0.1) / g, (w0 + 0.1) / g), where h0, w0 are the patch counts of
        the input and g the native grid side (the 0.1 avoids a floor-rounding error, DINO
        issue #8). Returned unchanged at the native square size.
        """
        p = self.patch_embed.patch_size
        h0, w0 = height // p, width // p
        if h0 < 1 or w0 < 1:
            raise ValueError(f"input of {height}x{width} px is smaller than the patch size {p}")
        g = self.patch_embed.grid_size
        if h0 == g and w0 == g:
            return self.pos_embed
        dim = self.pos_embed.shape[-1]
        class_pos = self.pos_embed[:, :1]
        grid = self.pos_embed[:, 1:].float().reshape(1, g, g, dim).permute(0, 3, 1, 2)
        grid = F.interpolate(grid, scale_factor=((h0 + 0.1) / g, (w0 + 0.1) / g), mode="bicubic")
        if grid.shape[-2:] != (h0, w0):
            raise RuntimeError(f"position-embedding interpolation gave {tuple(grid.shape[-2:])}, expected {(h0, w0)}")
        grid = grid.permute(0, 2, 3, 1).reshape(1, h0 * w0, dim).to(self.pos_embed.dtype)
        return torch.cat((class_pos, grid), dim=1)

    def prepare_tokens(self, x: torch.Tensor) -> torch.Tensor:
        """Patch embedding + CLS token + (interpolated) position embedding + dropout."""
        if x.ndim != 4:
            raise ValueError(f"expected images of shape (B, C, H, W), got {tuple(x.shape)}")
        B, _, H, W = x.shape
        p = self.patch_embed.patch_size
        if H < p or W < p:
            raise ValueError(f"input of {H}x{W} px is smaller than the patch size {p}")
        tokens = self.patch_embed(x)
        tokens = torch.cat((self.cls_token.expand(B, -1, -1), tokens), dim=1)
        return self.pos_drop(tokens + self.interpolate_pos_encoding(H, W))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.prepare_tokens(x)
        for blk in self.blocks:
            x = blk(x)
        return self.norm(x)[:, 0]


def vit_tiny(patch_size: int = 16, **kwargs) -> VisionTransformer:
    """ViT-Tiny: 192-d, 12 blocks, 3 heads."""
    return VisionTransformer(patch_size=patch_size, embed_dim=192, depth=12, num_heads=3, mlp_ratio=4,
                             qkv_bias=True, norm_eps=1e-6, **kwargs)


def vit_small(patch_size: int = 16, **kwargs) -> VisionTransformer:
    """ViT-Small (DeiT-S): 384-d, 12 blocks, 6 heads."""
    return VisionTransformer(patch_size=patch_size, embed_dim=384, depth=12, num_heads=6, mlp_ratio=4,
                             qkv_bias=True, norm_eps=1e-6, **kwargs)


def vit_base(patch_size: int = 16, **kwargs) -> VisionTransformer:
    """ViT-Base: 768-d, 12 blocks, 12 heads."""
    return VisionTransformer(patch_size=patch_size, embed_dim=768, depth=12, num_heads=12, mlp_ratio=4,
                             qkv_bias=True, norm_eps=1e-6, **kwargs)
