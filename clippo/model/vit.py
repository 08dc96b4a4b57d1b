"""A plain ViT encoder with MAP pooling, the image tower of CLIPPO.

Module and parameter names mirror big_vision's `models/vit.py` so that every checkpoint leaf
maps to one torch parameter by a fixed rule (see `clippo.convert`):

    img/embedding/kernel                     img.embedding.weight   (Conv2d layout)
    img/pos_embedding                        img.pos_embedding
    img/Transformer/encoderblock_3/LayerNorm_0/scale
                                             img.Transformer.encoderblock_3.LayerNorm_0.weight
    img/Transformer/encoderblock_3/MultiHeadDotProductAttention_0/query/kernel
                                             img.Transformer.encoderblock_3
                                                .MultiHeadDotProductAttention_0.query.weight
    img/Transformer/encoder_norm/scale       img.Transformer.encoder_norm.weight
    img/MAPHead_0/probe                      img.MAPHead_0.probe
    img/head/{kernel,bias}                   img.head.{weight,bias}

The patch embedding, every attention call, LayerNorm and the Dense layers with an epilogue
(bias + GELU, residual add) go through `clippo.kernels`, which picks a Triton kernel on CUDA and
a torch fallback elsewhere (LayerNorm and the fused Dense only when enabled: see
`clippo.kernels.set_fusions`). The parameters stay plain nn.Linear / nn.LayerNorm ones.
"""
import math

import torch
import torch.nn.functional as F
from torch import nn

from clippo import kernels

# Sizes from big_vision's decode_variant (Table 2 of arXiv:2106.04560, plus SoViT-400m).
VARIANTS = {
    "mu": dict(width=32, depth=1, mlp_dim=128, num_heads=2),
    "Ti": dict(width=192, depth=12, mlp_dim=768, num_heads=3),
    "S": dict(width=384, depth=12, mlp_dim=1536, num_heads=6),
    "M": dict(width=512, depth=12, mlp_dim=2048, num_heads=8),
    "B": dict(width=768, depth=12, mlp_dim=3072, num_heads=12),
    "L": dict(width=1024, depth=24, mlp_dim=4096, num_heads=16),
    "So400m": dict(width=1152, depth=27, mlp_dim=4304, num_heads=16),
    "H": dict(width=1280, depth=32, mlp_dim=5120, num_heads=16),
    "g": dict(width=1408, depth=40, mlp_dim=6144, num_heads=16),
    "G": dict(width=1664, depth=48, mlp_dim=8192, num_heads=16),
}

POOL_TYPES = ("map", "gap", "0")
LN_EPS = 1e-6  # flax.linen.LayerNorm default


def decode_variant(variant):
    """"B" or "B/16" -> dict(width, depth, mlp_dim, num_heads[, patch_size]).

    The one place model sizes are decoded; None gives {} so callers can pass sizes directly.
    """
    if variant is None:
        return {}
    if not isinstance(variant, str):
        raise ValueError(f"variant must be a string like 'B/16', got {variant!r}")
    name, _, patch = variant.partition("/")
    if name not in VARIANTS:
        raise ValueError(f"unknown ViT variant {name!r} in {variant!r}; known: {sorted(VARIANTS)}")
    out = dict(VARIANTS[name])
    if patch:
        if not patch.isdigit() or int(patch) <= 0:
            raise ValueError(f"patch size in variant {variant!r} must be a positive integer")
        out["patch_size"] = int(patch)
    return out


def variant_name(width, depth, mlp_dim, num_heads, patch_size):
    """The inverse of decode_variant: "B/16" for B/16 sizes, None if no variant matches."""
    sizes = dict(width=width, depth=depth, mlp_dim=mlp_dim, num_heads=num_heads)
    for name, v in VARIANTS.items():
        if v == sizes:
            return f"{name}/{patch_size}"
    return None


def _pair(x, name):
    if isinstance(x, int) and not isinstance(x, bool):
        x = (x, x)
    x = tuple(x)
    if len(x) != 2 or not all(isinstance(v, int) and v > 0 for v in x):
        raise ValueError(f"{name} must be a positive int or a pair of them, got {x!r}")
    return x


def _dense(layer, x, activation=None, residual=None):
    """act(layer(x)) + residual through the kernel that fuses the epilogue into the matmul."""
    return kernels.linear(x, layer.weight, layer.bias, activation=activation, residual=residual)


class MlpBlock(nn.Module):
    """Dense -> GELU (tanh approximation, as flax's nn.gelu) -> Dense [+ residual]."""

    def __init__(self, width, mlp_dim):
        super().__init__()
        self.Dense_0 = nn.Linear(width, mlp_dim)
        self.Dense_1 = nn.Linear(mlp_dim, width)

    def forward(self, x, residual=None):
        return _dense(self.Dense_1, _dense(self.Dense_0, x, "gelu"), residual=residual)

    def init_weights(self):
        for dense in (self.Dense_0, self.Dense_1):
            nn.init.xavier_uniform_(dense.weight)
            nn.init.normal_(dense.bias, std=1e-6)


class MultiHeadDotProductAttention(nn.Module):
    """flax MultiHeadDotProductAttention: per-head q/k/v projections, softmax(q k^T / sqrt(d)) v.

    The projections are stored as nn.Linear over the flattened (heads, head_dim) axis; the
    big_vision kernels (D, H, Dh) and (H, Dh, D) reshape onto them without a copy.
    """

    def __init__(self, width, num_heads):
        super().__init__()
        if width % num_heads:
            raise ValueError(f"width {width} is not divisible by num_heads {num_heads}")
        self.num_heads = num_heads
        self.head_dim = width // num_heads
        self.query = nn.Linear(width, width)
        self.key = nn.Linear(width, width)
        self.value = nn.Linear(width, width)
        self.out = nn.Linear(width, width)

    def _heads(self, x):  # [B, L, H*Dh] -> [B, H, L, Dh] (a view)
        b, n, _ = x.shape
        return x.view(b, n, self.num_heads, self.head_dim).transpose(1, 2)

    def _project(self, x, layers):
        """x through several Dense layers as one GEMM (weights concatenated, a small copy)."""
        if len(layers) == 1:
            return layers[0](x)
        w = torch.cat([layer.weight for layer in layers])
        b = torch.cat([layer.bias for layer in layers])
        return F.linear(x, w, b)

    def _attend(self, q, k, v, lengths=None):
        """[B, Lq, D], [B, L, D] x 2 -> [B, Lq, D], heads split and merged around the kernel."""
        y = kernels.attention(self._heads(q), self._heads(k), self._heads(v),
                              scale=1.0 / math.sqrt(self.head_dim), lengths=lengths)
        b, _, n, _ = y.shape
        return y.transpose(1, 2).reshape(b, n, self.num_heads * self.head_dim)

    def forward(self, inputs_q, inputs_kv, residual=None, packing=None):
        """packing: None, or a clippo.model.tokens.Packing or TokenGroups: inputs_kv (and
        inputs_q, when it is inputs_kv) are a token stream [M, D] of sequences of different
        lengths; the projections run on the M tokens, attention on each group of sequences
        (`packing.split`), padded to its longest, keys past each sequence's length masked."""
        width = self.num_heads * self.head_dim
        split = packing.split if packing is not None else (lambda t, zeros: [(t, None)])
        if inputs_q is inputs_kv:  # self-attention: q, k and v from one GEMM
            qkv = self._project(inputs_q, (self.query, self.key, self.value))
            ys = [self._attend(*g.split(width, dim=-1), lengths=lengths)
                  for g, lengths in split(qkv, zeros=False)]  # padded keys are masked
            y = packing.join(ys) if packing is not None else ys[0]
        else:  # the MAP head: the probe's query (a row each), k and v from one GEMM
            q = self._project(inputs_q, (self.query,))
            ys, row = [], 0
            for g, lengths in split(self._project(inputs_kv, (self.key, self.value)),
                                    zeros=False):
                k, v = g.split(width, dim=-1)
                ys.append(self._attend(q[row:row + g.shape[0]], k, v, lengths=lengths))
                row += g.shape[0]
            y = torch.cat(ys) if len(ys) > 1 else ys[0]
        return _dense(self.out, y, residual=residual)

    def init_weights(self):
        for dense in (self.query, self.key, self.value, self.out):
            nn.init.xavier_uniform_(dense.weight)
            nn.init.zeros_(dense.bias)


def _lecun_normal_(w, fan_in):
    # flax's lecun_normal: truncated normal (at 2 std), rescaled to variance 1 / fan_in
    std = 1.0 / math.sqrt(fan_in) / 0.87962566103423978
    nn.init.trunc_normal_(w, std=std, a=-2 * std, b=2 * std)


class LayerNorm(nn.LayerNorm):
    """nn.LayerNorm (same parameters) computed by clippo.kernels.layer_norm."""

    def forward(self, x):
        return kernels.layer_norm(x, self.weight, self.bias, self.eps)


def _layer_norm(width):
    return LayerNorm(width, eps=LN_EPS)


class Encoder1DBlock(nn.Module):
    """Pre-LN block: x + MHSA(LN(x)), then x + MLP(LN(x))."""

    def __init__(self, width, mlp_dim, num_heads):
        super().__init__()
        self.LayerNorm_0 = _layer_norm(width)
        self.MultiHeadDotProductAttention_0 = MultiHeadDotProductAttention(width, num_heads)
        self.LayerNorm_1 = _layer_norm(width)
        self.MlpBlock_0 = MlpBlock(width, mlp_dim)

    def forward(self, x, packing=None):
        y = self.LayerNorm_0(x)
        x = self.MultiHeadDotProductAttention_0(y, y, residual=x, packing=packing)
        return self.MlpBlock_0(self.LayerNorm_1(x), residual=x)


class Encoder(nn.Module):
    """`depth` blocks named encoderblock_{i} (big_vision's unscanned layout), then encoder_norm."""

    def __init__(self, width, depth, mlp_dim, num_heads):
        super().__init__()
        self.depth = depth
        for i in range(depth):
            self.add_module(f"encoderblock_{i}", Encoder1DBlock(width, mlp_dim, num_heads))
        self.encoder_norm = _layer_norm(width)

    def blocks(self):
        return [getattr(self, f"encoderblock_{i}") for i in range(self.depth)]

    def forward(self, x, out=None, packing=None):
        """x: [B, L, D], or packed tokens [T, D] with `packing` (clippo.model.tokens)."""
        for i, block in enumerate(self.blocks()):
            x = block(x) if packing is None else block(x, packing=packing)
            if out is not None:
                out[f"block{i:02d}"] = x
        return self.encoder_norm(x)


class MAPHead(nn.Module):
    """Multihead attention pooling: a learned probe attends over the tokens, then a residual MLP."""

    def __init__(self, width, mlp_dim, num_heads):
        super().__init__()
        self.probe = nn.Parameter(torch.empty(1, 1, width))
        self.MultiHeadDotProductAttention_0 = MultiHeadDotProductAttention(width, num_heads)
        self.LayerNorm_0 = _layer_norm(width)
        self.MlpBlock_0 = MlpBlock(width, mlp_dim)

    def forward(self, x, packing=None):
        """x: [B, L, D], or packed tokens [T, D] with `packing`; returns [B, D]."""
        rows = x.shape[0] if packing is None else packing.batch
        probe = self.probe.expand(rows, -1, -1)
        x = self.MultiHeadDotProductAttention_0(probe, x, packing=packing)
        x = self.MlpBlock_0(self.LayerNorm_0(x), residual=x)
        return x[:, 0]


class ViT(nn.Module):
    """ViT with learned position embedding, no class token, and a pooled output.

    ViT("B/16", image_size=224, num_classes=768): sizes come from `decode_variant`, keyword
    arguments (width, depth, mlp_dim, num_heads, patch_size) override them. pool_type is "map"
    (CLIPPO), "gap" (mean of tokens) or "0" (first token). num_classes=None leaves out `head`.
    Images whose patch grid has as many cells as the position table are accepted.

    forward(x, keep=mask) encodes each image from the patches its bool [B, N] mask keeps
    (raster order; see clippo.model.tokens): the others' kept tokens are packed end to end,
    joined by the rows that keep every patch, and every per-token layer runs once on that
    stream; attention and pooling run per group, masked past each row's length.
    """

    def __init__(self, variant=None, *, width=None, depth=None, mlp_dim=None, num_heads=None,
                 patch_size=None, image_size=224, pool_type="map", num_classes=None,
                 posemb="learn"):
        super().__init__()
        given = dict(width=width, depth=depth, mlp_dim=mlp_dim, num_heads=num_heads,
                     patch_size=patch_size)
        cfg = {**decode_variant(variant), **{k: v for k, v in given.items() if v is not None}}
        if cfg.get("mlp_dim") is None and "width" in cfg:
            cfg["mlp_dim"] = 4 * cfg["width"]  # big_vision's default
        missing = [k for k in given if k not in cfg]
        if missing:
            raise ValueError(f"ViT needs {missing}: pass a variant like 'B/16' or the sizes")
        for k, v in cfg.items():
            if not isinstance(v, int) or isinstance(v, bool) or v <= 0:
                raise ValueError(f"{k} must be a positive int, got {v!r}")
        if pool_type not in POOL_TYPES:
            raise ValueError(f"unknown pool_type {pool_type!r}; expected one of {POOL_TYPES}")
        if posemb != "learn":
            raise ValueError(f"unknown posemb {posemb!r}; only 'learn' is supported")
        if num_classes is not None and (not isinstance(num_classes, int) or num_classes <= 0):
            raise ValueError(f"num_classes must be None or a positive int, got {num_classes!r}")

        self.width, self.depth = cfg["width"], cfg["depth"]
        self.mlp_dim, self.num_heads = cfg["mlp_dim"], cfg["num_heads"]
        self.patch_size = cfg["patch_size"]
        self.image_size = _pair(image_size, "image_size")
        self.pool_type = pool_type
        self.num_classes = num_classes
        p = self.patch_size
        if self.image_size[0] % p or self.image_size[1] % p:
            raise ValueError(f"image_size {self.image_size} is not a multiple of patch {p}")
        self.num_patches = (self.image_size[0] // p) * (self.image_size[1] // p)

        d = self.width
        self.embedding = nn.Conv2d(3, d, kernel_size=p, stride=p)
        self.pos_embedding = nn.Parameter(torch.empty(1, self.num_patches, d))
        self.Transformer = Encoder(d, self.depth, self.mlp_dim, self.num_heads)
        self.MAPHead_0 = MAPHead(d, self.mlp_dim, self.num_heads) if pool_type == "map" else None
        self.head = nn.Linear(d, num_classes) if num_classes else None
        if self.pos_embedding.device.type != "meta":  # meta: weights come from a checkpoint
            self.init_weights()

    @property
    def config(self):
        return dict(width=self.width, depth=self.depth, mlp_dim=self.mlp_dim,
                    num_heads=self.num_heads, patch_size=self.patch_size,
                    image_size=list(self.image_size), pool_type=self.pool_type,
                    num_classes=self.num_classes)

    @torch.no_grad()
    def init_weights(self):
        """big_vision's initialisers (flax defaults where vit.py names none)."""
        w = self.embedding.weight
        _lecun_normal_(w, fan_in=w.shape[1] * w.shape[2] * w.shape[3])
        nn.init.zeros_(self.embedding.bias)
        nn.init.normal_(self.pos_embedding, std=1.0 / math.sqrt(self.width))
        for m in self.modules():
            if isinstance(m, (MlpBlock, MultiHeadDotProductAttention)):
                m.init_weights()
            elif isinstance(m, nn.LayerNorm):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        if self.MAPHead_0 is not None:
            # xavier_uniform of a (1, 1, D) array: fan_in = 1, fan_out = D (flax's convention).
            bound = math.sqrt(6.0 / (1 + self.width))
            nn.init.uniform_(self.MAPHead_0.probe, -bound, bound)
        if self.head is not None:
            _lecun_normal_(self.head.weight, fan_in=self.width)
            nn.init.zeros_(self.head.bias)

    def forward(self, x, return_intermediates=False, keep=None):
        """x: [B, 3, H, W] float in [-1, 1] or uint8 in [0, 255]. Returns [B, num_classes or D].

        keep: bool [B, N] or None (every patch): the patches each image is encoded from.
        With return_intermediates (not with a keep mask), returns (output, dict) with the tokens
        after the position embedding ("with_posemb"), each block ("blockNN"), "encoded",
        "pre_logits", "logits".
        """
        if x.dim() != 4 or x.shape[1] != 3:
            raise ValueError(f"images must be [B, 3, H, W], got shape {tuple(x.shape)}")
        p = self.patch_size
        h, w = x.shape[-2:]
        if h % p or w % p or (h // p) * (w // p) != self.num_patches:
            raise ValueError(f"image of size {h}x{w} does not give the {self.num_patches} patches "
                             f"of the position table with patch size {p}")
        if keep is not None:
            if return_intermediates:
                raise ValueError("return_intermediates is not supported with a keep mask")
            return self._forward_kept(x, keep)
        out = {} if return_intermediates else None
        x = kernels.patch_embed(x, self.embedding.weight, self.embedding.bias, self.pos_embedding)
        if out is not None:
            out["with_posemb"] = x
        x = self.Transformer(x, out)
        if out is not None:
            out["encoded"] = x
        x = self._pool(x)
        if out is not None:
            out["pre_logits"] = x
        if self.head is not None:
            x = self.head(x)
            if out is not None:
                out["logits"] = x
        return (x, out) if return_intermediates else x

    def _pool(self, x, packing=None):
        """[B, L, D] -> [B, D]; a token stream [M, D] with `packing`: each sequence over its
        own tokens, rows in the packing's order."""
        if self.pool_type == "map":
            return self.MAPHead_0(x, packing)
        if packing is not None:  # each group padded (zeros past each length), pooled, joined
            return torch.cat([self._pool(g) if lengths is None or self.pool_type != "gap"
                              else g.sum(1) / lengths[:, None].to(g.dtype)
                              for g, lengths in packing.split(x)])
        if self.pool_type == "gap":
            return x.mean(dim=1)
        return x[:, 0]  # "0": the first kept token

    def forward_tokens(self, x, patch_index):
        """Encode each image from its indexed patches: patch_index int [B, L] (kept patches
        first, then -1; every row keeps at least one). Returns [B, num_classes or D].

        Rows of one length (patch dropout) run as a plain batch. Rows of different lengths
        (ink tokens) are packed (`_encode_stream`), so a batch costs its tokens, not its
        longest row times its rows."""
        lengths = (patch_index >= 0).sum(1)
        if bool((lengths == patch_index.shape[1]).all()):
            x = kernels.patch_embed(x, self.embedding.weight, self.embedding.bias,
                                    self.pos_embedding, patch_index=patch_index)
            x = self._pool(self.Transformer(x))
            return self.head(x) if self.head is not None else x
        return self._encode_stream(x[:0], x, patch_index)

    def _encode_stream(self, whole, part, patch_index):
        """Rows `whole` (every patch) and rows `part` (the patches of patch_index) as one token
        stream (clippo.model.tokens.TokenGroups): every per-token layer runs once on all their
        tokens and no padding, attention and pooling on each group apart. Returns the rows of
        `whole`, then those of `part`."""
        from clippo.model.tokens import Packing, TokenGroups
        packing = Packing((patch_index >= 0).sum(1), patch_index.shape[1])
        emb = (self.embedding.weight, self.embedding.bias, self.pos_embedding)
        parts = [packing.pack(kernels.patch_embed(part, *emb, patch_index=patch_index))]
        if whole.shape[0]:
            stream = TokenGroups(whole.shape[0], self.num_patches, packing)
            dense = kernels.patch_embed(whole, *emb)
            parts.insert(0, dense.reshape(-1, dense.shape[-1]))
        else:
            stream = packing
        x = self._pool(self.Transformer(torch.cat(parts) if len(parts) > 1 else parts[0],
                                        packing=stream), stream)
        return self.head(x) if self.head is not None else x

    def _forward_kept(self, x, keep):
        from clippo.model.tokens import keep_index
        if keep.shape != (x.shape[0], self.num_patches) or keep.dtype != torch.bool:
            raise ValueError(f"keep must be a bool mask [{x.shape[0]}, {self.num_patches}], "
                             f"got {keep.dtype} {tuple(keep.shape)}")
        keep = keep.to(x.device)
        whole = keep.all(1)
        n = int(whole.sum())  # rows that keep every patch (one read back to the host)
        if n == whole.shape[0]:
            return self(x)
        if n == 0:
            return self.forward_tokens(x, keep_index(keep)[0])
        # rows that keep everything (photos) and the others (texts) in one token stream
        if bool(whole[:n].all()):  # photos first, the training step's layout: views, no copy
            return self._encode_stream(x[:n], x[n:], keep_index(keep[n:])[0])
        rows_whole, rows_part = whole.nonzero()[:, 0], (~whole).nonzero()[:, 0]
        z = self._encode_stream(x[rows_whole], x[rows_part], keep_index(keep[rows_part])[0])
        return z[torch.cat([rows_whole, rows_part]).argsort()]
