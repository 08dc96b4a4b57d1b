"""An independent float64 numpy forward of big_vision's CLIPPO one-tower ViT.

Works directly on a big_vision-layout parameter dict ({"img/embedding/kernel": (P,P,3,D) ...,
"t": (1,)}), written from the reference's equations, sharing no code with clippo.model:
  patches: VALID conv with stride P, HWIO kernel; + learned pos_embedding (1, N, D)
  block:   x += MHA(LN(x)); x += Dense_1(gelu_tanh(Dense_0(LN(x))))   (LN eps 1e-6)
  MHA:     q,k,v = x @ kernel(D,H,Dh) + bias(H,Dh); softmax(q.k / sqrt(Dh)) v; out kernel (H,Dh,D)
  MAP:     probe (1,1,D) attends over tokens; x += MLP(LN(x)); token 0;  head: Dense(D, out)
  z / (||z|| + 1e-8)
"""
import math

import numpy as np


def bv_param_shapes(width, depth, num_heads, mlp_dim, patch, num_pos, out_dim):
    """{big_vision path (no "params/"): shape} for a CLIPPO model with a MAP head."""
    d, h, dh = width, num_heads, width // num_heads

    def mha(prefix):
        s = {}
        for name in ("query", "key", "value"):
            s[f"{prefix}/{name}/kernel"] = (d, h, dh)
            s[f"{prefix}/{name}/bias"] = (h, dh)
        s[f"{prefix}/out/kernel"] = (h, dh, d)
        s[f"{prefix}/out/bias"] = (d,)
        return s

    def mlp(prefix):
        return {f"{prefix}/Dense_0/kernel": (d, mlp_dim), f"{prefix}/Dense_0/bias": (mlp_dim,),
                f"{prefix}/Dense_1/kernel": (mlp_dim, d), f"{prefix}/Dense_1/bias": (d,)}

    def ln(prefix):
        return {f"{prefix}/scale": (d,), f"{prefix}/bias": (d,)}

    shapes = {"img/embedding/kernel": (patch, patch, 3, d), "img/embedding/bias": (d,),
              "img/pos_embedding": (1, num_pos, d)}
    for i in range(depth):
        b = f"img/Transformer/encoderblock_{i}"
        shapes.update(ln(f"{b}/LayerNorm_0"))
        shapes.update(mha(f"{b}/MultiHeadDotProductAttention_0"))
        shapes.update(ln(f"{b}/LayerNorm_1"))
        shapes.update(mlp(f"{b}/MlpBlock_0"))
    shapes.update(ln("img/Transformer/encoder_norm"))
    shapes["img/MAPHead_0/probe"] = (1, 1, d)
    shapes.update(mha("img/MAPHead_0/MultiHeadDotProductAttention_0"))
    shapes.update(ln("img/MAPHead_0/LayerNorm_0"))
    shapes.update(mlp("img/MAPHead_0/MlpBlock_0"))
    shapes["img/head/kernel"] = (d, out_dim)
    shapes["img/head/bias"] = (out_dim,)
    shapes["t"] = (1,)
    return shapes


def random_bv_params(rng, **sizes):
    """Random float32 parameters, scaled so activations stay O(1) through the network."""
    params = {}
    for path, shape in bv_param_shapes(**sizes).items():
        leaf = path.rsplit("/", 1)[-1]
        if leaf == "kernel":
            # q/k/v kernels are (D, H, Dh): the input is axis 0; others take all but the last.
            qkv = path.endswith(("query/kernel", "key/kernel", "value/kernel"))
            fan_in = shape[0] if qkv else int(np.prod(shape[:-1]))
            a = rng.normal(0, 1 / math.sqrt(fan_in), shape)
        elif leaf == "scale":
            a = 1 + 0.1 * rng.normal(size=shape)
        elif leaf == "t":
            a = np.array([math.log(10.0)]) + 0.1 * rng.normal(size=shape)
        else:  # biases, pos_embedding, probe
            a = 0.1 * rng.normal(size=shape) if leaf == "bias" else rng.normal(size=shape)
        params[path] = a.astype(np.float32)
    return params


def layer_norm(x, scale, bias, eps=1e-6):
    mu = x.mean(-1, keepdims=True)
    var = ((x - mu) ** 2).mean(-1, keepdims=True)
    return (x - mu) / np.sqrt(var + eps) * scale + bias


def gelu_tanh(x):
    return 0.5 * x * (1 + np.tanh(math.sqrt(2 / math.pi) * (x + 0.044715 * x ** 3)))


def softmax(x, axis=-1):
    e = np.exp(x - x.max(axis, keepdims=True))
    return e / e.sum(axis, keepdims=True)


def mha(p, prefix, xq, xkv):
    g = lambda n: p[f"{prefix}/{n}"].astype(np.float64)
    q = np.einsum("bld,dhk->blhk", xq, g("query/kernel")) + g("query/bias")
    k = np.einsum("bld,dhk->blhk", xkv, g("key/kernel")) + g("key/bias")
    v = np.einsum("bld,dhk->blhk", xkv, g("value/kernel")) + g("value/bias")
    w = softmax(np.einsum("bqhk,bshk->bhqs", q, k) / math.sqrt(q.shape[-1]))
    o = np.einsum("bhqs,bshk->bqhk", w, v)
    return np.einsum("bqhk,hkd->bqd", o, g("out/kernel")) + g("out/bias")


def mlp(p, prefix, x):
    g = lambda n: p[f"{prefix}/{n}"].astype(np.float64)
    y = gelu_tanh(x @ g("Dense_0/kernel") + g("Dense_0/bias"))
    return y @ g("Dense_1/kernel") + g("Dense_1/bias")


def ln(p, prefix, x):
    return layer_norm(x, p[f"{prefix}/scale"].astype(np.float64),
                      p[f"{prefix}/bias"].astype(np.float64))


def bv_embed(p, images, normalize=True):
    """images: NCHW, uint8 [0, 255] or float [-1, 1]. Returns [B, out_dim] float64."""
    x = np.asarray(images)
    x = x / 255.0 * 2 - 1 if x.dtype == np.uint8 else x.astype(np.float64)
    x = x.transpose(0, 2, 3, 1)  # NHWC, as the reference
    kernel = p["img/embedding/kernel"].astype(np.float64)
    ps = kernel.shape[0]
    b, hh, ww, c = x.shape
    gh, gw = hh // ps, ww // ps
    cells = x[:, :gh * ps, :gw * ps].reshape(b, gh, ps, gw, ps, c)
    tok = np.einsum("bipjqc,pqcd->bijd", cells, kernel) + p["img/embedding/bias"]
    tok = tok.reshape(b, gh * gw, -1) + p["img/pos_embedding"].astype(np.float64)
    depth = 0
    while f"img/Transformer/encoderblock_{depth}/LayerNorm_0/scale" in p:
        blk = f"img/Transformer/encoderblock_{depth}"
        y = ln(p, f"{blk}/LayerNorm_0", tok)
        tok = tok + mha(p, f"{blk}/MultiHeadDotProductAttention_0", y, y)
        tok = tok + mlp(p, f"{blk}/MlpBlock_0", ln(p, f"{blk}/LayerNorm_1", tok))
        depth += 1
    tok = ln(p, "img/Transformer/encoder_norm", tok)
    probe = np.broadcast_to(p["img/MAPHead_0/probe"].astype(np.float64), (b, 1, tok.shape[-1]))
    y = mha(p, "img/MAPHead_0/MultiHeadDotProductAttention_0", probe, tok)
    y = y + mlp(p, "img/MAPHead_0/MlpBlock_0", ln(p, "img/MAPHead_0/LayerNorm_0", y))
    z = y[:, 0] @ p["img/head/kernel"].astype(np.float64) + p["img/head/bias"]
    if normalize:
        z = z / (np.linalg.norm(z, axis=1, keepdims=True) + 1e-8)
    return z


def save_bv_npz(path, params, prefix="params/", extra=None):
    """np.savez with '/'-joined names, as big_vision checkpoints."""
    arrays = {prefix + k: v for k, v in params.items()}
    arrays.update(extra or {})
    with open(path, "wb") as f:
        np.savez(f, **arrays)
