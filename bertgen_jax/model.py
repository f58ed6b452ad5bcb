"""The BERTGEN model in Flax NNX: visual-linguistic embeddings, a post-LN BERT encoder, an MLM head.

Inputs are one dict of arrays (see `layout.BATCH_KEYS`); every row is a fixed-length sequence of
tokens of four kinds (padding, text, image region, `[END]`). A row may hold several
examples ("packed"): `segment_ids` then keeps attention inside each example.

Faithful to docs/specification.md; the one knowing change is that the MLM head can be
evaluated only at the positions asked for (`mlm_logits(hidden, positions)`), which gives the
same numbers there as the original's head over every position.
"""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from bertgen_jax.layout import KIND_END, KIND_PAD, KIND_REGION, KIND_TEXT

@dataclasses.dataclass(frozen=True)
class ModelConfig:
    vocab_size: int = 119547
    hidden_size: int = 768
    num_layers: int = 12
    num_heads: int = 12
    intermediate_size: int = 3072
    max_positions: int = 512
    type_vocab_size: int = 3  # type 1 is never used; kept so VL-BERT tables load as they are
    dropout: float = 0.1
    attention_dropout: float = 0.1
    layer_norm_eps: float = 1e-12
    feature_dim: int = 2048  # RoI appearance feature size
    box_frequencies: int = 256  # sin/cos frequencies per box coordinate (geometry code 8x this)
    visual_ln_init: float = 0.0  # gammas of visual_ln_text/object: vision off in a fresh model
    dtype: str = "float32"  # compute dtype; parameters are always float32
    remat: bool = False  # recompute each layer's activations in the backward pass
    # How it was trained: "unrolled" (the original's layout) or "one_pass" (data/one_pass.py).
    # The parameters are the same either way; decoding follows this (decode.generate).
    objective: str = "unrolled"

    @property
    def geometry_dim(self) -> int:
        return 4 * 2 * self.box_frequencies

    @property
    def compute_dtype(self):
        return jnp.dtype(self.dtype)


def _normal(std=0.02):
    return nnx.initializers.normal(std)


def _dense(cfg: ModelConfig, din: int, dout: int, axes, rngs: nnx.Rngs) -> nnx.Linear:
    return nnx.Linear(
        din, dout, dtype=cfg.compute_dtype, param_dtype=jnp.float32,
        kernel_init=nnx.with_partitioning(_normal(), axes),
        bias_init=nnx.with_partitioning(nnx.initializers.zeros_init(), (axes[1],)),
        rngs=rngs)


def _layer_norm(cfg: ModelConfig, rngs: nnx.Rngs, scale: float = 1.0) -> nnx.LayerNorm:
    # Statistics in float32 whatever the compute dtype: bf16 variance loses too much.
    return nnx.LayerNorm(
        cfg.hidden_size, epsilon=cfg.layer_norm_eps, dtype=jnp.float32, param_dtype=jnp.float32,
        scale_init=nnx.with_partitioning(nnx.initializers.constant(scale), ("embed",)),
        bias_init=nnx.with_partitioning(nnx.initializers.zeros_init(), ("embed",)),
        rngs=rngs)


def _embed(cfg: ModelConfig, rows: int, axes, rngs: nnx.Rngs) -> nnx.Embed:
    return nnx.Embed(rows, cfg.hidden_size, param_dtype=jnp.float32,
                     embedding_init=nnx.with_partitioning(_normal(), axes), rngs=rngs)


def box_geometry(boxes, image_wh, frequencies: int):
    """Sinusoidal code of pixel boxes, laid out as VL-BERT's: [..., 4 coords x (sin, cos) x freq].

    boxes [..., 4] (x1, y1, x2, y2) in an image of image_wh [..., 2] (W, H) -> [..., 8 * frequencies].
    """
    w, h = image_wh[..., 0:1], image_wh[..., 1:2]
    x1, y1, x2, y2 = (boxes[..., i:i + 1] for i in range(4))
    # Centre and size as percentages of the image side.
    coords = jnp.concatenate(
        [(x1 + x2) / 2 / w, (y1 + y2) / 2 / h, (x2 - x1) / w, (y2 - y1) / h], axis=-1) * 100.0
    inv_freq = 1.0 / (1000.0 ** (jnp.arange(frequencies, dtype=jnp.float32) / frequencies))
    angles = coords[..., None] * inv_freq  # [..., 4, F]
    code = jnp.concatenate([jnp.sin(angles), jnp.cos(angles)], axis=-1)  # [..., 4, 2F]
    return code.reshape(*code.shape[:-2], -1)


class Embeddings(nnx.Module):
    """Word / [IMG] / [END] tokens + positions + token types, with the image fed to text tokens."""

    def __init__(self, cfg: ModelConfig, rngs: nnx.Rngs):
        self.cfg = cfg
        h = cfg.hidden_size
        self.word_embeddings = _embed(cfg, cfg.vocab_size, ("vocab", "embed"), rngs)
        self.position_embeddings = _embed(cfg, cfg.max_positions, (None, "embed"), rngs)
        self.token_type_embeddings = _embed(cfg, cfg.type_vocab_size, (None, "embed"), rngs)
        self.end_embedding = nnx.Param(_normal()(rngs.params(), (h,)), out_sharding=("embed",))
        self.image_embedding = nnx.Param(_normal()(rngs.params(), (h,)), out_sharding=("embed",))
        self.region_proj = _dense(cfg, cfg.geometry_dim + cfg.feature_dim, h, ("features", "embed"), rngs)
        self.visual_ln_text = _layer_norm(cfg, rngs, scale=cfg.visual_ln_init)
        self.visual_ln_object = _layer_norm(cfg, rngs, scale=cfg.visual_ln_init)
        self.layer_norm = _layer_norm(cfg, rngs)
        self.dropout = nnx.Dropout(cfg.dropout, rngs=rngs)

    def regions(self, batch):
        """Projected RoIs [B, R, H] (float32), or None for a text-only batch."""
        if batch.get("region_features") is None:
            return None
        geometry = box_geometry(batch["region_boxes"], batch["region_image_wh"], self.cfg.box_frequencies)
        # Geometry first, then appearance: the order VL-BERT's projection weights expect.
        x = jnp.concatenate([geometry, batch["region_features"].astype(jnp.float32)], axis=-1)
        x = self.dropout(x)
        return jax.nn.relu(self.region_proj(x)).astype(jnp.float32)

    def __call__(self, batch, regions=None):
        """regions: projected RoIs [B, R, H] (`self.regions(batch)`) when the caller has them."""
        kind = batch["token_kind"]
        word = self.word_embeddings(batch["token_ids"])  # [B, L, H]
        if regions is None:
            regions = self.regions(batch)
        index = batch["region_index"]
        if regions is None:
            visual = jnp.zeros_like(word)
        else:
            picked = jnp.take_along_axis(regions, jnp.maximum(index, 0)[..., None], axis=1)
            visual = jnp.where(index[..., None] >= 0, picked, 0.0)  # [B, L, H]
        # With no image the zero vector makes visual_ln_text add just its bias, as the original.
        text = word + self.visual_ln_text(visual)
        region = self.visual_ln_object(visual) + self.image_embedding[...]
        k = kind[..., None]
        tokens = jnp.where(k == KIND_TEXT, text,
                           jnp.where(k == KIND_REGION, region,
                                     jnp.where(k == KIND_END, self.end_embedding[...], 0.0)))
        x = tokens + self.position_embeddings(batch["positions"]) + \
            self.token_type_embeddings(batch["token_type"])
        x = self.dropout(self.layer_norm(x))
        return x.astype(self.cfg.compute_dtype)


class Attention(nnx.Module):
    def __init__(self, cfg: ModelConfig, rngs: nnx.Rngs):
        self.cfg = cfg
        h = cfg.hidden_size
        self.query = _dense(cfg, h, h, ("embed", "heads"), rngs)
        self.key = _dense(cfg, h, h, ("embed", "heads"), rngs)
        self.value = _dense(cfg, h, h, ("embed", "heads"), rngs)
        self.output = _dense(cfg, h, h, ("heads", "embed"), rngs)
        self.attention_dropout = nnx.Dropout(cfg.attention_dropout, rngs=rngs)

    def keys_values(self, x):
        """Keys and values of x's tokens, [B, L, heads, H / heads] each: what a cache keeps."""
        b, l, h = x.shape
        split = lambda t: t.reshape(b, l, self.cfg.num_heads, h // self.cfg.num_heads)
        return split(self.key(x)), split(self.value(x))

    def __call__(self, x, allowed, past=None):
        """x [B, L, H]; allowed [B, 1, L, L] bool -> [B, L, H]. past: (keys, values) [B, P, ...]
        of earlier tokens x may also attend to (a decoder's cache); allowed is then [B, 1, L, P + L]."""
        b, l, h = x.shape
        n = self.cfg.num_heads
        q = self.query(x).reshape(b, l, n, h // n)
        k, v = self.keys_values(x)
        if past is not None:
            k, v = jnp.concatenate([past[0], k], 1), jnp.concatenate([past[1], v], 1)
        scores = jnp.einsum("bqnd,bknd->bnqk", q, k, preferred_element_type=jnp.float32)
        scores = scores / math.sqrt(h // n)
        scores = jnp.where(allowed, scores, jnp.finfo(jnp.float32).min)
        probs = self.attention_dropout(jax.nn.softmax(scores, axis=-1)).astype(x.dtype)
        context = jnp.einsum("bnqk,bknd->bqnd", probs, v).reshape(b, l, h)
        return self.output(context)


class Layer(nnx.Module):
    """Post-LN transformer layer: x = LN(x + Attn(x)); x = LN(x + FFN(x))."""

    def __init__(self, cfg: ModelConfig, rngs: nnx.Rngs):
        self.cfg = cfg
        self.attention = Attention(cfg, rngs)
        self.attention_ln = _layer_norm(cfg, rngs)
        self.intermediate = _dense(cfg, cfg.hidden_size, cfg.intermediate_size, ("embed", "mlp"), rngs)
        self.output = _dense(cfg, cfg.intermediate_size, cfg.hidden_size, ("mlp", "embed"), rngs)
        self.output_ln = _layer_norm(cfg, rngs)
        self.dropout = nnx.Dropout(cfg.dropout, rngs=rngs)

    def __call__(self, x, allowed, past=None):
        dt = self.cfg.compute_dtype
        x = self.attention_ln(x + self.dropout(self.attention(x, allowed, past))).astype(dt)
        y = self.output(jax.nn.gelu(self.intermediate(x), approximate=False))
        return self.output_ln(x + self.dropout(y)).astype(dt)


class MlmHead(nnx.Module):
    """dense + GELU + LayerNorm, then the decoder tied to the word embeddings, with its own bias."""

    def __init__(self, cfg: ModelConfig, rngs: nnx.Rngs):
        self.cfg = cfg
        self.dense = _dense(cfg, cfg.hidden_size, cfg.hidden_size, ("embed", "embed_out"), rngs)
        self.layer_norm = _layer_norm(cfg, rngs)
        self.bias = nnx.Param(jnp.zeros((cfg.vocab_size,), jnp.float32), out_sharding=("vocab",))

    def __call__(self, hidden, word_embeddings):
        """hidden [..., H] -> float32 logits [..., V]."""
        dt = self.cfg.compute_dtype
        x = self.layer_norm(jax.nn.gelu(self.dense(hidden), approximate=False)).astype(dt)
        logits = jnp.einsum("...h,vh->...v", x, word_embeddings.astype(dt),
                            preferred_element_type=jnp.float32)
        return logits + self.bias[...]


def attention_allowed(batch):
    """[B, 1, L, L] bool: a token sees the present tokens of its own segment (padding mask only
    when a row holds one example); with `attention_rank` (one-pass rows) only those of even rank
    not above its own, and itself."""
    seg = batch.get("segment_ids")
    if seg is None:
        seg = (batch["token_kind"] != KIND_PAD).astype(jnp.int32)
    allowed = (seg[:, :, None] == seg[:, None, :]) & (seg[:, None, :] > 0)
    rank = batch.get("attention_rank")
    if rank is not None:
        q, k = rank[:, :, None], rank[:, None, :]
        allowed &= ((k % 2 == 0) & (k <= q)) | jnp.eye(rank.shape[1], dtype=bool)[None]
    return allowed[:, None]


class BertGen(nnx.Module):
    def __init__(self, cfg: ModelConfig, rngs: nnx.Rngs):
        if cfg.hidden_size % cfg.num_heads:
            raise ValueError(f"hidden_size {cfg.hidden_size} is not a multiple of num_heads {cfg.num_heads}")
        self.cfg = cfg
        # Logical axis names are recorded as metadata; placing them on a mesh is sharding.py's job.
        with nnx.use_eager_sharding(False):
            self.embeddings = Embeddings(cfg, rngs)
            self.layers = nnx.List([Layer(cfg, rngs) for _ in range(cfg.num_layers)])
            self.mlm_head = MlmHead(cfg, rngs)

    def encode(self, batch, regions=None):
        """Final hidden states [B, L, H] in the compute dtype. regions: the batch's RoIs already
        projected (`embeddings.regions(batch)`), e.g. once for every step of a decode."""
        allowed = attention_allowed(batch)
        x = self.embeddings(batch, regions)
        # Remat only pays in a backward pass: a model in eval mode (evaluation, decoding) runs
        # its layers plainly, which also lets it be called inside scans and while loops.
        remat = self.cfg.remat and not self.embeddings.dropout.deterministic
        for layer in self.layers:
            if remat:
                x = nnx.remat(lambda mod, y: mod(y, allowed))(layer, x)
            else:
                x = layer(x, allowed)
        return x

    def mlm_logits(self, hidden, positions=None):
        """Logits [B, P, V] at positions [B, P] (gathered before the vocabulary projection), or at
        every position [B, L, V] when positions is None (what the original computes)."""
        if positions is not None:
            hidden = jnp.take_along_axis(hidden, positions[..., None], axis=1)
        return self.mlm_head(hidden, self.embeddings.word_embeddings.embedding[...])

    def __call__(self, batch, positions=None):
        return self.mlm_logits(self.encode(batch), positions)


def count_params(model: nnx.Module, exclude_word_embeddings: bool = False) -> int:
    total = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(nnx.state(model, nnx.Param)))
    if exclude_word_embeddings:
        total -= int(np.prod(model.embeddings.word_embeddings.embedding.shape))
    return total


def text_batch(input_ids, attention_mask):
    """Model inputs for plain BERT-style text rows (no image, no `[END]`): [B, L] ids and 0/1 mask."""
    ids = jnp.asarray(input_ids, jnp.int32)
    present = jnp.asarray(attention_mask) > 0
    return {
        "token_ids": ids,
        "token_kind": jnp.where(present, KIND_TEXT, KIND_PAD).astype(jnp.int32),
        "token_type": jnp.zeros_like(ids),
        "positions": jnp.broadcast_to(jnp.arange(ids.shape[1], dtype=jnp.int32), ids.shape),
        "region_index": jnp.full_like(ids, -1),
    }
