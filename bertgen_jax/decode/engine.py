"""The decoding engine: fixed-shape buffers, the layout each step builds in them, and stages.

Every step rebuilds the training layout of docs/specification.md ("Input layout") for the
prefix generated so far, `[TO_X] [CLS] src [SEP] y<t [MASK] [SEP] [IMG]... [END]`, runs the
encoder and reads the MLM head at `[MASK]` only. In a buffer a row is the example's tokens in
that order, text, regions, `[END]`, then padding: the regions and `[END]` move one slot right
with each generated token (they are gathered from RoIs projected when rows are filled, not
every step), so a row of T text tokens and R regions needs T + R + 1 positions, as the
original's.

Buffers are bucketed (buffer length to BUFFER_BUCKET, head width to LENGTH_BUCKET, projected
regions to powers of two) and a batch runs in stages: a stage's `lax.while_loop` exits when
some unfinished row outgrows its buffer, and the next stage continues in a longer one, so short
outputs never pay for max_len (`run_stages`). A decoder's loop state is a small dataclass that
says how long each row's prefix is (`prefix_lengths`) and which rows are done.

budget: source and regions are cut by `fit_budget` as for a training pair with an EMPTY target
(the target is unknown; it then grows past the budget, as in the original).
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from bertgen_jax import compiles, vocab
from bertgen_jax.data.pipeline import regions_reader
from bertgen_jax.data.unroll import fitted_head
from bertgen_jax.layout import KIND_END, KIND_PAD, KIND_REGION, KIND_TEXT, TASKS, TYPE_TEXT, TYPE_VISUAL

LENGTH_BUCKET = 32
BUFFER_BUCKET = 16  # finer: each stage's whole row (text, regions, [END]) is rounded to it
MIN_REGION_SLOTS = 8
NO_BUDGET = 1 << 30  # no cut: every context fits
REGION_KEYS = ("region_features", "region_boxes", "region_image_wh")


@dataclasses.dataclass(frozen=True)
class Context:
    """What a pair contributes before the target: `[TO_X] [CLS] src [SEP]` and its regions."""
    head: np.ndarray  # [h] int32
    image: int
    regions: int  # region tokens, whole image included; 0 for MT


def contexts(pairs, budget=None) -> list[Context]:
    """Each pair's context, cut to budget (int or {task: int}) as the module docstring says;
    data/unroll.py's `fitted_head` builds it, as for a training pair with an empty target."""
    out = []
    for i, p in enumerate(pairs):
        b = (NO_BUDGET if budget is None or p.task not in TASKS  # fitted_head names an unknown task
             else budget if isinstance(budget, (int, np.integer)) else budget[p.task])
        try:
            head, regions = fitted_head(dataclasses.replace(p, tgt_ids=np.zeros(0, np.int32)), b)
        except ValueError as err:
            raise ValueError(f"pair {i}: {err}") from err
        out.append(Context(head, p.image if regions else -1, regions))
    return out


def check_positions(model, ctxs, max_len, beyond=2) -> None:
    """The highest position a decode uses, h + max_len + beyond, must be in the model's table:
    unrolled rows put [END] at h + max_len + 2 (the last [MASK] follows max_len - 1 tokens);
    one-pass decoding (cached.py) puts its last query at h + max_len - 1 (beyond=-1)."""
    for i, c in enumerate(ctxs):
        if len(c.head) + max_len + beyond >= model.cfg.max_positions:
            raise ValueError(f"pair {i}: a context of {len(c.head)} tokens plus max_len={max_len} reaches "
                             f"position {len(c.head) + max_len + beyond}, past the model's {model.cfg.max_positions} "
                             "positions: lower max_len or pass a budget (as in training: longer contexts are cut to it)")


def round_up(n, m):
    return -(-n // m) * m


def eval_split(model):
    """(graphdef, state) of the model with dropout off; the caller's model keeps its mode."""
    return nnx.split(nnx.view(model, only=nnx.Dropout, deterministic=True))


def cached_regions(regions):
    """image -> (boxes, features, wh), each image read once per decode."""
    return functools.lru_cache(maxsize=None)(regions_reader(regions))


# -- host buffers ------------------------------------------------------------------------------

def host_inputs(ctxs, regions_of, rows, feature_dim, sized_for=None) -> dict:
    """Per-row numpy arrays; rows past len(ctxs) are copies of the first with valid False.
    Head width and region slots fit the contexts `sized_for` (default ctxs)."""
    sized_for = sized_for or ctxs
    hw = round_up(max(len(c.head) for c in sized_for), LENGTH_BUCKET)
    most = max(c.regions for c in sized_for)  # a text-only batch keeps one (unused) slot
    slots = max(MIN_REGION_SLOTS, 1 << (most - 1).bit_length()) if most else 1
    int_row = lambda: np.zeros(rows, np.int32)
    inp = {"head": np.zeros((rows, hw), np.int32), "h": int_row(), "n_regions": int_row(),
           "fixed": int_row(), "valid": np.arange(rows) < len(ctxs),
           "region_features": np.zeros((rows, slots, feature_dim), np.float32),
           "region_boxes": np.zeros((rows, slots, 4), np.float32),
           "region_image_wh": np.ones((rows, slots, 2), np.float32)}
    for r in range(rows):  # dummies: finished from the start
        set_row(inp, r, ctxs[r] if r < len(ctxs) else ctxs[0], regions_of)
    return inp


def fixed_positions(ctx: Context) -> int:
    """Positions a row needs besides its prefix's t + 2 ([MASK] [SEP]): head, regions, [END]."""
    return len(ctx.head) + ctx.regions + 1


def set_row(inp, r, ctx: Context, regions_of) -> None:
    """Row r of host inputs `inp` holds ctx: its head, lengths and regions."""
    inp["head"][r], inp["region_features"][r], inp["region_boxes"][r] = 0, 0, 0
    inp["region_image_wh"][r] = 1  # ones keep empty boxes finite
    inp["head"][r, :len(ctx.head)] = ctx.head
    inp["h"][r], inp["n_regions"][r], inp["fixed"][r] = len(ctx.head), ctx.regions, fixed_positions(ctx)
    if ctx.regions:
        boxes, feats, wh = regions_of(ctx.image)
        inp["region_boxes"][r, :ctx.regions] = boxes[:ctx.regions]
        inp["region_features"][r, :ctx.regions] = feats[:ctx.regions]
        inp["region_image_wh"][r, :ctx.regions] = wh


def longest_buffer(ctxs, max_len) -> int:
    """The buffer a row of the longest context needs for its last step, bucketed."""
    return round_up(max(map(fixed_positions, ctxs)) + max_len + 1, BUFFER_BUCKET)


def order(ctxs) -> list[int]:
    """Similar contexts next to each other: text-only first, then by head length and regions."""
    return sorted(range(len(ctxs)), key=lambda i: (ctxs[i].regions > 0, len(ctxs[i].head), ctxs[i].regions))


@functools.partial(jax.jit, static_argnums=0)
def project(graphdef, state, region_arrays):
    """Projected RoIs [B, R, H]: once per batch or refill, reused by every step of every stage."""
    compiles.record("project", *region_arrays["region_features"].shape)
    return nnx.merge(graphdef, state).embeddings.regions(region_arrays)


def fixed_batches(model, pairs, regions, budget, max_len, batch_size):
    """(indices, graphdef, state, inputs, longest buffer) per batch of a decoder without refill
    (beam search); similar contexts share a batch. Inputs stay numpy (but the projected RoIs):
    eager ops would compile once per shape."""
    ctxs = contexts(pairs, budget)
    check_positions(model, ctxs, max_len)
    regions_of, (graphdef, state) = cached_regions(regions), eval_split(model)
    ordered = order(ctxs)
    for start in range(0, len(ordered), batch_size):
        idx = ordered[start:start + batch_size]
        inp = host_inputs([ctxs[i] for i in idx], regions_of, batch_size, model.cfg.feature_dim)
        inp["projected"] = project(graphdef, state, {k: inp.pop(k) for k in REGION_KEYS})
        yield idx, graphdef, state, inp, round_up(int(inp["fixed"].max()) + max_len + 1, BUFFER_BUCKET)


# -- inside a stage ----------------------------------------------------------------------------

def layout(inp, seq, t, lt):
    """Model batch [N, lt] for rows whose prefix is seq[:, :t]; inp from host_inputs, seq
    [N, M], t [N]. Non-pad tokens are exactly unroll's example, in order, then padding."""
    head, h, nr = inp["head"], inp["h"][:, None], inp["n_regions"][:, None]
    j, t = jnp.arange(lt)[None], t[:, None]  # [1, lt], [N, 1]
    from_head = jnp.take_along_axis(head, jnp.clip(j, 0, head.shape[1] - 1), 1)
    from_seq = jnp.take_along_axis(seq, jnp.clip(j - h, 0, seq.shape[1] - 1), 1)
    after = jnp.where(j == h + t, vocab.MASK_ID, vocab.SEP_ID)  # [MASK] [SEP] after the prefix
    ids = jnp.where(j < h, from_head, jnp.where(j < h + t, from_seq, after))
    n_text = h + t + 2
    slot = j - n_text  # [N, lt]: the region slot at j, if j is a region
    text, region, end = j < n_text, (slot >= 0) & (slot < nr), slot == nr
    kind = jnp.where(text, KIND_TEXT, jnp.where(region, KIND_REGION, jnp.where(end, KIND_END, KIND_PAD)))
    image = jnp.where(nr > 0, 0, -1)
    return {
        "token_ids": jnp.where(text, ids, 0),
        "token_kind": kind, "token_type": jnp.where(kind >= KIND_REGION, TYPE_VISUAL, TYPE_TEXT),
        # Pad slots get position 0: an id past the table would embed as NaN and poison attention.
        "positions": jnp.where(text, j, jnp.where(region, n_text, jnp.where(end, n_text + 1, 0))),
        "region_index": jnp.where(text, image, jnp.where(region, slot, -1)),
    }


def mask_logits(model, inp, seq, t, lt):
    """[N, V] logits at each row's [MASK] (h + t); the RoIs are inp["projected"], not projected again."""
    hidden = model.encode(layout(inp, seq, t, lt), regions=inp["projected"])
    return model.mlm_logits(hidden, (inp["h"] + t)[:, None])[:, 0]


def fits(state, fixed, lt):
    """Traced: every unfinished row has room for its next step in a buffer of lt positions."""
    return jnp.all(state.done | (fixed + state.prefix_lengths() + 2 <= lt))


def buffer_length(fixed, t, done, lt_max) -> int:
    """The next stage's buffer: room for the longest unfinished row's next step, bucketed."""
    need = int(np.max(np.where(done, 0, fixed + t + 2)))
    return min(round_up(need, BUFFER_BUCKET), lt_max)


def run_stages(stage, state, fixed, lt_max):
    """Run `stage(state, lt)` in ever longer buffers until every row is done."""
    while not (done := np.asarray(state.done)).all():
        state = stage(state, buffer_length(fixed, np.asarray(state.prefix_lengths()), done, lt_max))
    return state
