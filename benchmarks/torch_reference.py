"""The original BERTGEN's way of computing, in PyTorch, as the baseline of a speed benchmark.

Written from docs/specification.md, not from the original's code. What makes it "the original's
way" (and what `bertgen_jax` avoids) is kept on purpose:
  * one unrolled example per row, every row padded to the longest example in the batch;
  * the sequence assembled VL-BERT style: text embeddings [B, T, H], object embeddings [B, R, H]
    and the `[END]` vector scattered into [B, L, H] by a per-row index;
  * the MLM head (119,547-way for mBERT) computed at EVERY position, and the loss taken as
    cross-entropy over all positions with every non-`[MASK]` label ignored;
  * greedy decoding 8 sentences at a time, the input rebuilt one token longer each step, finished
    rows computed until the last row stops or max_len + 1 passes have run.
Attention uses `F.scaled_dot_product_attention`, so the baseline gets PyTorch's fused kernels.

Use (pairs and regions_of from benchmarks.workload.synthetic_pairs):
    model = TorchBertGen(cfg).to(device); load_from_jax(model, jax_model)  # or keep its own init
    batch = original_batch([ex for p in pairs for ex in unroll(p, 64)][:64], regions_of, cfg.feature_dim, device)
    loss = train_step(model, make_optimizer(model, 1e-4), batch)
    ids = greedy_original(model, pairs, regions_of, max_len=150)

Parameter names equal our NNX module paths with PyTorch leaf names (`layers.0.attention.query.
weight`), which is all `load_from_jax` needs to copy a `bertgen_jax.model.BertGen` for parity.
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Callable, Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from bertgen_jax import vocab
from bertgen_jax.data.unroll import Example, Pair, fit_budget
from bertgen_jax.layout import KIND_TEXT
from bertgen_jax.model import ModelConfig

TYPE_TEXT, TYPE_VISUAL = 0, 2
DEFAULT_BUDGETS = {"ic": 64, "mmt": 64, "mt": 512}  # the original's sequence budgets
IGNORE = -1  # label of every position but [MASK], as VL-BERT's MLM loss


def _layer_norm(cfg: ModelConfig, scale: float = 1.0) -> nn.LayerNorm:
    ln = nn.LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps)
    nn.init.constant_(ln.weight, scale)
    return ln


class Embeddings(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        h = cfg.hidden_size
        self.cfg = cfg
        self.word_embeddings = nn.Embedding(cfg.vocab_size, h)
        self.position_embeddings = nn.Embedding(cfg.max_positions, h)
        self.token_type_embeddings = nn.Embedding(cfg.type_vocab_size, h)
        self.end_embedding = nn.Parameter(0.02 * torch.randn(h))
        self.image_embedding = nn.Parameter(0.02 * torch.randn(h))
        self.region_proj = nn.Linear(cfg.geometry_dim + cfg.feature_dim, h)
        self.visual_ln_text = _layer_norm(cfg, cfg.visual_ln_init)
        self.visual_ln_object = _layer_norm(cfg, cfg.visual_ln_init)
        self.layer_norm = _layer_norm(cfg)
        self.dropout = nn.Dropout(cfg.dropout)
        f = cfg.box_frequencies
        self.register_buffer("inv_freq", 1.0 / 1000.0 ** (torch.arange(f, dtype=torch.float32) / f),
                             persistent=False)

    def box_code(self, boxes, image_wh):
        """boxes [B, R, 4] pixels in images image_wh [B, 2] -> [B, R, 4 * 2 * F]: per coordinate
        (centre x, centre y, width, height, as % of the image side) F sines then F cosines."""
        w, h = image_wh[:, None, 0], image_wh[:, None, 1]
        x1, y1, x2, y2 = boxes.unbind(-1)
        coords = torch.stack([(x1 + x2) / 2 / w, (y1 + y2) / 2 / h, (x2 - x1) / w, (y2 - y1) / h], -1)
        angles = (coords * 100.0)[..., None] * self.inv_freq  # [B, R, 4, F]
        return torch.cat([angles.sin(), angles.cos()], -1).flatten(2)

    def forward(self, batch):
        text = self.word_embeddings(batch["text_ids"])  # [B, T, H]
        b, h = text.shape[0], text.shape[-1]
        feats = batch["region_features"]
        if feats.shape[1]:
            code = torch.cat([self.box_code(batch["region_boxes"], batch["image_wh"]), feats], -1)
            objects = F.relu(self.region_proj(self.dropout(code)))  # [B, R, H]
            whole = objects[:, 0] * batch["has_image"][:, None]  # zero without an image
        else:
            objects = text.new_zeros(b, 0, h)
            whole = text.new_zeros(b, h)
        # The whole image reaches every text token; with no image only visual_ln_text's bias does.
        text = text + self.visual_ln_text(whole)[:, None]
        objects = self.visual_ln_object(objects) + self.image_embedding
        pieces = torch.cat([text, objects, self.end_embedding.expand(b, 1, h), text.new_zeros(b, 1, h)], 1)
        tokens = torch.gather(pieces, 1, batch["seq_index"][..., None].expand(-1, -1, h))  # [B, L, H]
        x = tokens + self.position_embeddings(batch["positions"]) + \
            self.token_type_embeddings(batch["token_type"])
        return self.dropout(self.layer_norm(x))


class Attention(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        h = cfg.hidden_size
        self.heads, self.p = cfg.num_heads, cfg.attention_dropout
        self.query, self.key, self.value, self.output = (nn.Linear(h, h) for _ in range(4))

    def forward(self, x, mask):
        """x [B, L, H]; mask [B, 1, 1, L] bool, True where a key may be attended."""
        b, l, h = x.shape
        split = lambda t: t.view(b, l, self.heads, h // self.heads).transpose(1, 2)
        ctx = F.scaled_dot_product_attention(split(self.query(x)), split(self.key(x)), split(self.value(x)),
                                             attn_mask=mask, dropout_p=self.p if self.training else 0.0)
        return self.output(ctx.transpose(1, 2).reshape(b, l, h))


class Layer(nn.Module):
    """Post-LN: x = LN(x + Attn(x)); x = LN(x + FFN(x)), exact GELU."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.attention = Attention(cfg)
        self.attention_ln = _layer_norm(cfg)
        self.intermediate = nn.Linear(cfg.hidden_size, cfg.intermediate_size)
        self.output = nn.Linear(cfg.intermediate_size, cfg.hidden_size)
        self.output_ln = _layer_norm(cfg)
        self.dropout = nn.Dropout(cfg.dropout)

    def forward(self, x, mask):
        x = self.attention_ln(x + self.dropout(self.attention(x, mask)))
        return self.output_ln(x + self.dropout(self.output(F.gelu(self.intermediate(x)))))


class MlmHead(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.dense = nn.Linear(cfg.hidden_size, cfg.hidden_size)
        self.layer_norm = _layer_norm(cfg)
        self.bias = nn.Parameter(torch.zeros(cfg.vocab_size))

    def forward(self, x, word_embeddings):
        # The decoder is the word table itself (tied), plus the head's own bias.
        return F.linear(self.layer_norm(F.gelu(self.dense(x))), word_embeddings, self.bias)


class TorchBertGen(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        self.embeddings = Embeddings(cfg)
        self.layers = nn.ModuleList(Layer(cfg) for _ in range(cfg.num_layers))
        self.mlm_head = MlmHead(cfg)
        for m in self.modules():  # BERT's init; LayerNorms keep theirs
            if isinstance(m, (nn.Linear, nn.Embedding)):
                nn.init.normal_(m.weight, std=0.02)
            if isinstance(m, nn.Linear):
                nn.init.zeros_(m.bias)

    def forward(self, batch):
        """Logits [B, L, V] at every position, padding included, as the original computes them."""
        x = self.embeddings(batch)
        mask = batch["valid"][:, None, None, :]
        for layer in self.layers:
            x = layer(x, mask)
        return self.mlm_head(x, self.embeddings.word_embeddings.weight)


# ------------------------------------------------------------------------------ weights

def load_from_jax(torch_model: TorchBertGen, jax_model) -> None:
    """Copy a `bertgen_jax.model.BertGen`'s parameters into `torch_model` (same sizes). NNX
    kernels are [in, out], PyTorch weights [out, in]; scales and tables become `weight`."""
    from flax import nnx
    leaf_names = {"kernel": "weight", "scale": "weight", "embedding": "weight", "bias": "bias"}
    ours = {}
    for path, var in nnx.to_flat_state(nnx.state(jax_model, nnx.Param)):
        parts = [str(p) for p in path]
        value = np.array(var[...], np.float32)  # a writable copy: torch.from_numpy wants one
        if parts[-1] in leaf_names:  # bare parameters (end_embedding, ...) keep their names
            parts[-1] = leaf_names[parts[-1]]
            if path[-1] == "kernel":
                value = value.T
        ours[".".join(parts)] = value
    params = dict(torch_model.named_parameters())
    if set(ours) != set(params):
        raise ValueError(f"parameter names differ: only in JAX {sorted(set(ours) - set(params))}, "
                         f"only in torch {sorted(set(params) - set(ours))}")
    with torch.no_grad():
        for name, p in params.items():
            if tuple(p.shape) != ours[name].shape:
                raise ValueError(f"{name}: JAX shape {ours[name].shape}, torch shape {tuple(p.shape)}")
            p.copy_(torch.from_numpy(ours[name]))


# ------------------------------------------------------------------------------ batches

@dataclasses.dataclass(frozen=True)
class Row:
    """One example as the original holds it: its text tokens and which regions follow them."""
    text: np.ndarray  # [T] ids: [TO_X] [CLS] source [SEP] prefix [MASK] [SEP]
    image: int
    num_regions: int
    flip: bool
    mask_index: int
    label: int


def row_of(ex: Example) -> Row:
    return Row(ex.token_ids[ex.token_kind == KIND_TEXT], ex.image, ex.num_regions, ex.flip,
               ex.mask_index, ex.label)


def region_tensors(rows: Sequence[Row], regions_of: Callable, feature_dim: int) -> dict[str, np.ndarray]:
    """Each row's regions padded to the most in the batch; boxes mirrored for flipped rows."""
    b, r = len(rows), max(row.num_regions for row in rows)
    out = {"region_boxes": np.zeros((b, r, 4), np.float32),
           "region_features": np.zeros((b, r, feature_dim), np.float32),
           "image_wh": np.ones((b, 2), np.float32), "has_image": np.zeros(b, np.float32)}
    for i, row in enumerate(rows):
        if row.num_regions:
            boxes, feats, wh = regions_of(row.image)
            boxes = np.array(boxes[:row.num_regions], np.float32)
            if row.flip:  # x -> (W - 1) - x, so x1 and x2 swap roles
                boxes[:, [0, 2]] = (wh[0] - 1) - boxes[:, [2, 0]]
            out["region_boxes"][i, :row.num_regions] = boxes
            out["region_features"][i, :row.num_regions] = feats[:row.num_regions]
            out["image_wh"][i], out["has_image"][i] = wh, 1.0
    return out


def sequence_tensors(rows: Sequence[Row]) -> dict[str, np.ndarray]:
    """Text, then regions, then [END], then padding to the longest row. `seq_index` picks each
    position from [text slots (T), region slots (R), END, zero]; text positions 0..t-1, regions
    t, END t+1; text type 0, regions and END type 2."""
    b = len(rows)
    t_max, r_max = max(len(r.text) for r in rows), max(r.num_regions for r in rows)
    length = max(len(r.text) + r.num_regions + 1 for r in rows)
    out = {"text_ids": np.zeros((b, t_max), np.int64),
           "seq_index": np.full((b, length), t_max + r_max + 1, np.int64),
           "positions": np.zeros((b, length), np.int64), "token_type": np.full((b, length), TYPE_TEXT, np.int64),
           "valid": np.zeros((b, length), bool), "mask_index": np.array([r.mask_index for r in rows]),
           "labels": np.array([r.label for r in rows], np.int64)}
    for i, row in enumerate(rows):
        t, r = len(row.text), row.num_regions
        out["text_ids"][i, :t] = row.text
        out["seq_index"][i, :t + r + 1] = np.concatenate([np.arange(t), t_max + np.arange(r), [t_max + r_max]])
        out["positions"][i, :t + r + 1] = np.concatenate([np.arange(t), np.full(r, t), [t + 1]])
        out["token_type"][i, t:t + r + 1] = TYPE_VISUAL
        out["valid"][i, :t + r + 1] = True
    return out


def to_torch(arrays: Mapping[str, np.ndarray], device=None) -> dict[str, torch.Tensor]:
    return {k: torch.from_numpy(v).to(device) for k, v in arrays.items()}


def original_batch(examples: Sequence[Example | Row], regions_of: Callable, feature_dim: int,
                   device=None) -> dict[str, torch.Tensor]:
    """A training batch the original's way: one example per row, padded to the longest."""
    rows = [row_of(e) if isinstance(e, Example) else e for e in examples]
    return to_torch({**sequence_tensors(rows), **region_tensors(rows, regions_of, feature_dim)}, device)


# ------------------------------------------------------------------------------ training

def make_optimizer(model: nn.Module, lr: float = 1e-4) -> torch.optim.Optimizer:
    """AdamW as the original (decoupled weight decay 1e-4, eps 1e-6); the fused kernel where
    this PyTorch has one for the parameters' device, else the multi-tensor one."""
    kwargs = dict(lr=lr, weight_decay=1e-4, eps=1e-6)
    try:
        return torch.optim.AdamW(model.parameters(), fused=True, **kwargs)
    except (RuntimeError, ValueError):
        return torch.optim.AdamW(model.parameters(), foreach=True, **kwargs)


def _autocast(model: nn.Module, dtype):
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(next(model.parameters()).device.type, dtype=dtype)


def train_step(model: TorchBertGen, optimizer, batch, clip: float = 10.0, autocast_dtype=None):
    """One step: full-vocabulary logits everywhere, cross-entropy over all positions with all
    but `[MASK]` ignored (= mean over examples), grad-norm clip, AdamW. Returns the loss before
    the update as a 0-d tensor on the device (no host sync)."""
    model.train()
    with _autocast(model, autocast_dtype):
        logits = model(batch)  # [B, L, V]
        targets = torch.full(logits.shape[:2], IGNORE, dtype=torch.long, device=logits.device)
        rows = torch.arange(logits.shape[0], device=logits.device)
        targets[rows, batch["mask_index"]] = batch["labels"]
        loss = F.cross_entropy(logits.float().flatten(0, 1), targets.flatten(), ignore_index=IGNORE)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
    optimizer.step()
    return loss.detach()


# ------------------------------------------------------------------------------ decoding

def decode_head(pair: Pair, budget: int) -> tuple[np.ndarray, int]:
    """([TO_X] [CLS] source [SEP], regions) of a pair to decode; source and regions cut to the
    budget like training examples with an empty target."""
    src, regions = fit_budget(dataclasses.replace(pair, tgt_ids=np.zeros(0, np.int32)), budget)
    if pair.task == "ic":
        src = src[:0]
    if pair.task == "mt":
        regions = 0
    head = np.concatenate([[vocab.lang_tag_id(pair.tgt_lang), vocab.CLS_ID], src, [vocab.SEP_ID]])
    return head.astype(np.int64), regions


def greedy_original(model: TorchBertGen, pairs: Sequence[Pair], regions_of: Callable, max_len: int,
                    batch_size: int = 8, budget_for: Mapping[str, int] = DEFAULT_BUDGETS,
                    autocast_dtype=None) -> list[list[int]]:
    """Greedy decoding the original's way; the generated ids of each pair, without [STOP]."""
    model.eval()
    device = next(model.parameters()).device
    out = []
    with torch.inference_mode(), _autocast(model, autocast_dtype):
        for start in range(0, len(pairs), batch_size):
            chunk = pairs[start:start + batch_size]
            heads = [decode_head(p, budget_for[p.task]) for p in chunk]
            rows = [Row(h, p.image, r, False, 0, 0) for p, (h, r) in zip(chunk, heads)]
            regions = to_torch(region_tensors(rows, regions_of, model.cfg.feature_dim), device)
            generated = [[] for _ in chunk]
            stop_at = [None] * len(chunk)  # length of each row's output at its first [STOP]
            for _ in range(max_len + 1):
                rows = [dataclasses.replace(row, text=np.concatenate([h, g, [vocab.MASK_ID, vocab.SEP_ID]]),
                                            mask_index=len(h) + len(g))
                        for row, (h, _), g in zip(rows, heads, generated)]
                batch = {**to_torch(sequence_tensors(rows), device), **regions}
                logits = model(batch)  # [B, L, V]: the head over every position
                at_mask = logits[torch.arange(len(rows), device=device), batch["mask_index"]]
                for i, token in enumerate(at_mask.argmax(-1).tolist()):
                    if stop_at[i] is None and token == vocab.STOP_ID:
                        stop_at[i] = len(generated[i])
                    generated[i].append(token)  # finished rows keep growing, as the original's
                if all(s is not None for s in stop_at):
                    break
            out += [g[:max_len if s is None else s] for g, s in zip(generated, stop_at)]
    return out
