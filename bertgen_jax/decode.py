"""Decoding: greedy as a jitted `lax.while_loop` over fixed buffers (beam search, in beam.py,
runs on the same buffers and stages), and the original's plain-Python greedy loop as the
reference they must match.

Every step rebuilds the training layout of docs/specification.md ("Input layout") for the
prefix generated so far, `[TO_X] [CLS] src [SEP] y<t [MASK] [SEP] [IMG]... [END]`, runs the
encoder and reads the MLM head at `[MASK]` only. In the jitted buffer a row is the example's
tokens in that order, text, regions, `[END]`, then padding: the regions and `[END]` move one
slot right with each generated token (they are gathered from RoIs projected when rows are
filled, not every step), so a row of T text tokens and R regions needs T + R + 1 positions,
as the original's.

Semantics shared by every decoder here:
- A row ends at its first `[STOP]` (not part of the output) or after `max_len` tokens; a row
  capped at max_len has no `[STOP]` term in its score (`sequence_logprob(..., max_len=)`).
- Length of a hypothesis = forward passes it took = tokens + 1 with `[STOP]`, max_len when
  capped. Beam ranks finished hypotheses by logprob / length ** length_penalty.
- budget: source and regions are cut by `fit_budget` as for a training pair with an EMPTY
  target (the target is unknown; it then grows past the budget, as in the original).

Buffers are bucketed (buffer length to BUFFER_BUCKET, head width to LENGTH_BUCKET, projected
regions to powers of two) and a batch runs in stages: a stage's loop exits when some
unfinished row outgrows its buffer and the next stage continues in a longer one, so short
outputs never pay for max_len. Greedy also refills: between stages, finished rows take the
next waiting sentences (see `greedy`); beam search decodes fixed batches.
`TRACES` counts traces (= compiles) per jitted function and bucket.
"""

from __future__ import annotations

import collections
import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from bertgen_jax import vocab
from bertgen_jax.data.pipeline import regions_reader
from bertgen_jax.data.rows import RowSpec, assemble_row, stack_rows
from bertgen_jax.data.unroll import Example, fit_budget
from bertgen_jax.layout import (BATCH_KEYS, KIND_END, KIND_PAD, KIND_REGION, KIND_TEXT, TASKS, TYPE_TEXT,
                                TYPE_VISUAL)

LENGTH_BUCKET = 32
BUFFER_BUCKET = 16  # finer: each stage's whole row (text, regions, [END]) is rounded to it
MIN_REGION_SLOTS = 8
REFILL = 4  # greedy: a stage also ends once 1/REFILL of its rows are done and sentences wait
REGION_KEYS = ("region_features", "region_boxes", "region_image_wh")
TRACES: collections.Counter = collections.Counter()  # (function, shapes...) -> traces


@dataclasses.dataclass(frozen=True)
class Context:
    """What a pair contributes before the target: `[TO_X] [CLS] src [SEP]` and its regions."""
    head: np.ndarray  # [h] int32
    image: int
    regions: int  # region tokens, whole image included; 0 for MT


def contexts(pairs, budget=None) -> list[Context]:
    """Each pair's context, cut to budget (int or {task: int}) as the module docstring says."""
    out = []
    for i, p in enumerate(pairs):
        if p.task not in TASKS:
            raise ValueError(f"pair {i}: unknown task {p.task!r}; expected one of {TASKS}")
        src, regions = p.src_ids, p.num_regions
        if budget is not None:
            b = budget if isinstance(budget, (int, np.integer)) else budget[p.task]
            src, regions = fit_budget(dataclasses.replace(p, tgt_ids=np.zeros(0, np.int32)), b)
        src = src[:0] if p.task == "ic" else src
        regions = 0 if p.task == "mt" else regions
        if p.task != "mt" and regions < 1:
            raise ValueError(f"pair {i}: a {p.task} pair needs image regions (num_regions={p.num_regions})")
        head = np.concatenate([[vocab.lang_tag_id(p.tgt_lang), vocab.CLS_ID], src, [vocab.SEP_ID]])
        out.append(Context(head.astype(np.int32), p.image if regions else -1, int(regions)))
    return out


def _check_positions(model, ctxs, max_len):
    # [END] of the longest row sits at h + max_len + 2 (the last [MASK] follows max_len - 1 tokens).
    for i, c in enumerate(ctxs):
        if len(c.head) + max_len + 2 >= model.cfg.max_positions:
            raise ValueError(f"pair {i}: a context of {len(c.head)} tokens plus max_len={max_len} "
                             f"exceeds the model's {model.cfg.max_positions} positions: lower max_len "
                             "or pass a budget (as in training: longer contexts are cut to it)")


_round_up = lambda n, m: -(-n // m) * m


def _eval_split(model):
    """(graphdef, state) of the model with dropout off; the caller's model keeps its mode."""
    return nnx.split(nnx.view(model, only=nnx.Dropout, deterministic=True))


# -- the original's loop ----------------------------------------------------------------------

def example(ctx: Context, prefix) -> Example:
    """The unrolled training example whose `[MASK]` follows `prefix` (== unroll(...)[-1])."""
    text = np.concatenate([ctx.head, np.asarray(prefix, np.int32), [vocab.MASK_ID, vocab.SEP_ID]]).astype(np.int32)
    n, r = len(text), ctx.regions
    kind = np.concatenate([np.full(n, KIND_TEXT), np.full(r, KIND_REGION), [KIND_END]]).astype(np.int32)
    region_index = np.concatenate([np.full(n, 0 if r else -1), np.arange(r), [-1]]).astype(np.int32)
    positions = np.concatenate([np.arange(n), np.full(r, n), [n + 1]]).astype(np.int32)
    return Example(np.concatenate([text, np.zeros(r + 1, np.int32)]), kind,
                   np.where(kind == KIND_TEXT, TYPE_TEXT, TYPE_VISUAL).astype(np.int32), positions,
                   region_index, mask_index=n - 2, label=-1, image=ctx.image, num_regions=r, flip=False)


def padded_batch(examples, regions_of, feature_dim, multiple=1) -> dict:
    """Rows padded to the longest example, as the original; multiple > 1 also rounds tokens to a
    multiple of it and regions to MIN_REGION_SLOTS (masked pads: same numbers, fewer shapes)."""
    regions = max(e.num_regions for e in examples)
    spec = RowSpec(_round_up(max(len(e) for e in examples), multiple), 1,
                   _round_up(max(1, regions), MIN_REGION_SLOTS if multiple > 1 else 1), feature_dim)
    batch = stack_rows([assemble_row([e], spec, regions_of) for e in examples])
    keys = [k for k in BATCH_KEYS if regions or multiple > 1 or not k.startswith("region_") or k == "region_index"]
    return {k: batch[k] for k in keys + ["mask_positions"]}


@functools.partial(jax.jit, static_argnums=0)
def _argmax_everywhere(graphdef, state, batch):
    # The head at EVERY position, as the original; the argmax on the device keeps the copy small.
    logits = nnx.merge(graphdef, state)({k: v for k, v in batch.items() if k != "mask_positions"})
    return jnp.argmax(logits, -1)  # [B, L]


@functools.partial(jax.jit, static_argnums=0)
def _logprobs_at_mask(graphdef, state, batch):
    logits = nnx.merge(graphdef, state)({k: v for k, v in batch.items() if k != "mask_positions"},
                                        batch["mask_positions"])
    return jax.nn.log_softmax(logits[:, 0], -1)  # [B, V]


_cached_regions = lambda regions: functools.lru_cache(maxsize=None)(regions_reader(regions))


def reference_greedy(model, pairs, regions=None, *, max_len=150, batch_size=8, budget=None,
                     pad_to_multiple=1) -> list[np.ndarray]:
    """The original's greedy loop: `batch_size` sentences at a time, the tight layout rebuilt
    and padded to the longest row every step, the head at every position, finished rows still
    computed, up to max_len + 1 passes (outputs cut to max_len). Each shape is compiled once
    (eager JAX is far slower than the original's eager PyTorch); pad_to_multiple > 1 pads the
    shapes (see padded_batch) so that tests compile a few times instead of once per step."""
    ctxs = contexts(pairs, budget)
    _check_positions(model, ctxs, max_len + 1)  # its last pass follows max_len tokens
    regions_of, (graphdef, state) = _cached_regions(regions), _eval_split(model)
    out = []
    for start in range(0, len(ctxs), batch_size):
        chunk = ctxs[start:start + batch_size]
        prefixes, stopped = [[] for _ in chunk], [False] * len(chunk)
        for _ in range(max_len + 1):
            if all(stopped):
                break
            examples = [example(c, p) for c, p in zip(chunk, prefixes)]
            batch = padded_batch(examples, regions_of, model.cfg.feature_dim, pad_to_multiple)
            best = np.asarray(_argmax_everywhere(graphdef, state, batch))
            for r, e in enumerate(examples):
                if not stopped[r]:
                    tok = int(best[r, e.mask_index])
                    stopped[r] = tok == vocab.STOP_ID
                    prefixes[r] += [] if stopped[r] else [tok]
        out += [np.asarray(p[:max_len], np.int32) for p in prefixes]
    return out


def next_token_logprobs(model, pairs, prefixes, regions=None, *, budget=None) -> np.ndarray:
    """[P, V] float32 log-probabilities of the token after prefixes[i] given pairs[i]'s context
    (teacher forcing); shapes are bucketed so that any number of calls compiles a few times."""
    ctxs = contexts(pairs, budget)
    examples = [example(c, p) for c, p in zip(ctxs, prefixes)]
    rows = _round_up(len(examples), 64)
    batch = padded_batch(examples + examples[-1:] * (rows - len(examples)), _cached_regions(regions),
                         model.cfg.feature_dim, multiple=LENGTH_BUCKET)
    return np.asarray(_logprobs_at_mask(*_eval_split(model), batch))[:len(examples)]


def sequence_logprobs(model, pairs, ids, regions=None, *, max_len=None, budget=None) -> np.ndarray:
    """[N] sum of log p(y_t | y<t) over ids[i] given pairs[i], plus log p([STOP] | ids[i]) unless
    max_len capped it: the score beam.beam_search reports."""
    items = [(p, np.asarray(y, np.int32)) for p, y in zip(pairs, ids)]
    labels = [list(y) + ([] if max_len is not None and len(y) >= max_len else [vocab.STOP_ID]) for _, y in items]
    flat = [(p, y[:t], label[t]) for (p, y), label in zip(items, labels) for t in range(len(label))]
    logp = next_token_logprobs(model, [p for p, _, _ in flat], [y for _, y, _ in flat], regions, budget=budget)
    picked = logp[np.arange(len(flat)), [label for _, _, label in flat]]
    return np.array([s.sum() for s in np.split(picked, np.cumsum([len(lb) for lb in labels])[:-1])], np.float32)


def sequence_logprob(model, pair, ids, regions=None, *, max_len=None, budget=None) -> float:  # one pair
    return float(sequence_logprobs(model, [pair], [ids], regions, max_len=max_len, budget=budget)[0])


# -- fixed-shape batches ----------------------------------------------------------------------

def _host_inputs(ctxs, regions_of, rows, feature_dim, sized_for=None) -> dict:
    """Per-row numpy arrays; rows past len(ctxs) are copies of the first with valid False.
    Head width and region slots fit the contexts `sized_for` (default ctxs)."""
    sized_for = sized_for or ctxs
    hw = _round_up(max(len(c.head) for c in sized_for), LENGTH_BUCKET)
    most = max(c.regions for c in sized_for)  # a text-only batch keeps one (unused) slot
    slots = max(MIN_REGION_SLOTS, 1 << (most - 1).bit_length()) if most else 1
    int_row = lambda: np.zeros(rows, np.int32)
    inp = {"head": np.zeros((rows, hw), np.int32), "h": int_row(), "n_regions": int_row(),
           "fixed": int_row(), "valid": np.arange(rows) < len(ctxs),
           "region_features": np.zeros((rows, slots, feature_dim), np.float32),
           "region_boxes": np.zeros((rows, slots, 4), np.float32),
           "region_image_wh": np.ones((rows, slots, 2), np.float32)}
    for r in range(rows):  # dummies: finished from the start
        _set_row(inp, r, ctxs[r] if r < len(ctxs) else ctxs[0], regions_of)
    return inp


def _fixed(ctx: Context) -> int:
    """Positions a row needs besides its prefix's t + 2 ([MASK] [SEP]): head, regions, [END]."""
    return len(ctx.head) + ctx.regions + 1


def _buffer(fixed, t, done, lt_max) -> int:
    """The stage buffer: room for the longest unfinished row's next step, bucketed."""
    need = int(np.max(np.where(done, 0, fixed + t + 2)))
    return min(_round_up(need, BUFFER_BUCKET), lt_max)


def _set_row(inp, r, ctx: Context, regions_of) -> None:
    """Row r of host inputs `inp` holds ctx: its head, lengths and regions."""
    inp["head"][r], inp["region_features"][r], inp["region_boxes"][r] = 0, 0, 0
    inp["region_image_wh"][r] = 1  # ones keep empty boxes finite
    inp["head"][r, :len(ctx.head)] = ctx.head
    inp["h"][r], inp["n_regions"][r], inp["fixed"][r] = len(ctx.head), ctx.regions, _fixed(ctx)
    if ctx.regions:
        boxes, feats, wh = regions_of(ctx.image)
        inp["region_boxes"][r, :ctx.regions] = boxes[:ctx.regions]
        inp["region_features"][r, :ctx.regions] = feats[:ctx.regions]
        inp["region_image_wh"][r, :ctx.regions] = wh


@functools.partial(jax.jit, static_argnums=0)
def _project(graphdef, state, region_arrays):
    """Projected RoIs [B, R, H]: once per batch or refill, reused by every step of every stage."""
    TRACES[("project",) + region_arrays["region_features"].shape] += 1
    return nnx.merge(graphdef, state).embeddings.regions(region_arrays)


def _layout(inp, seq, t, lt):
    """Model batch [N, lt] for rows whose prefix is seq[:, :t]; inp from _host_inputs, seq
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


def stage_model(graphdef, state, projected):
    model = nnx.merge(graphdef, state)
    # The RoIs were projected when the rows were filled (_project): hand them to the embeddings
    # instead of projecting them again every step. This copy of the model lives only inside the trace.
    model.embeddings.regions = lambda _batch: projected
    return model


def mask_logits(model, inp, seq, t, lt):
    """[N, V] logits at each row's [MASK] (h + t)."""
    return model.mlm_logits(model.encode(_layout(inp, seq, t, lt)), (inp["h"] + t)[:, None])[:, 0]


@functools.partial(jax.jit, static_argnums=(0, 4))
def _greedy_stage(graphdef, state, inp, carry, lt, stop_at):
    """Greedy steps while every unfinished row fits in lt positions and fewer than stop_at
    (traced) rows are done."""
    TRACES[("greedy", inp["head"].shape, lt, inp["projected"].shape[1])] += 1  # runs while tracing only
    model = stage_model(graphdef, state, inp["projected"])
    fixed, rows = inp["fixed"], jnp.arange(inp["h"].shape[0])

    def cond(c):
        fits = jnp.all(c["done"] | (fixed + c["t"] + 2 <= lt))
        return jnp.any(~c["done"]) & fits & (jnp.sum(c["done"]) < stop_at)

    def body(c):
        seq, t, done = c["seq"], c["t"], c["done"]
        tok = jnp.argmax(mask_logits(model, inp, seq, t, lt), -1).astype(jnp.int32)
        grow = ~done & (tok != vocab.STOP_ID)
        at = jnp.minimum(t, seq.shape[1] - 1)
        seq, t = seq.at[rows, at].set(jnp.where(grow, tok, seq[rows, at])), t + grow
        return {"seq": seq, "t": t, "done": done | (tok == vocab.STOP_ID) | (t >= seq.shape[1])}
    return jax.lax.while_loop(cond, body, carry)


def fixed_batches(model, pairs, regions, budget, max_len, batch_size):
    """(indices, graphdef, state, inputs, longest buffer) per batch of a decoder without refill
    (beam search); similar contexts share a batch. Inputs stay numpy (but the projected RoIs): eager ops would compile once per shape."""
    ctxs = contexts(pairs, budget)
    _check_positions(model, ctxs, max_len)
    order = _order(ctxs)
    regions_of, (graphdef, state) = _cached_regions(regions), _eval_split(model)
    for start in range(0, len(order), batch_size):
        idx = order[start:start + batch_size]
        inp = _host_inputs([ctxs[i] for i in idx], regions_of, batch_size, model.cfg.feature_dim)
        inp["projected"] = _project(graphdef, state, {k: inp.pop(k) for k in REGION_KEYS})
        lt_max = _round_up(int(inp["fixed"].max()) + max_len + 1, BUFFER_BUCKET)
        yield idx, graphdef, state, inp, lt_max


def _order(ctxs) -> list[int]:
    """Similar contexts next to each other: text-only first, then by head length and regions."""
    return sorted(range(len(ctxs)), key=lambda i: (ctxs[i].regions > 0, len(ctxs[i].head), ctxs[i].regions))


def run_stages(stage, carry, fixed, lt_max):
    """Run `stage(carry, lt)` in ever longer buffers until every row is finished; each stage
    needs room for the longest unfinished row's next step (fixed + t + 2 positions)."""
    while not (done := np.asarray(carry["done"])).all():
        carry = stage(carry, _buffer(fixed, np.asarray(carry["t"] if "t" in carry else carry["s"]), done, lt_max))
    return carry


def greedy(model, pairs, regions=None, *, max_len=150, batch_size=32, budget=None) -> list[np.ndarray]:
    """Greedy ids for each pair (no [STOP]), in input order. budget: int or {task: int}.

    The batch_size rows are refilled: between stages, a finished row hands its output back and
    takes the next waiting sentence (a stage also ends once 1/REFILL of the rows are done while
    sentences wait), so rows do not idle until the batch's longest output ends. Rows never
    interact, so the outputs are those of decoding each sentence alone."""
    ctxs = contexts(pairs, budget)
    _check_positions(model, ctxs, max_len)
    regions_of, (graphdef, state) = _cached_regions(regions), _eval_split(model)
    n, waiting, out = batch_size, collections.deque(_order(ctxs)), [None] * len(pairs)
    host = _host_inputs(ctxs[:1], regions_of, n, model.cfg.feature_dim, sized_for=ctxs)
    inp = {k: v for k, v in host.items() if k not in REGION_KEYS + ("valid",)}  # the same arrays
    lt_max = _round_up(max(map(_fixed, ctxs)) + max_len + 1, BUFFER_BUCKET)
    owner = np.full(n, -1)  # the pair each row decodes
    seq, t, done = np.zeros((n, max_len), np.int32), np.zeros(n, np.int32), np.ones(n, bool)
    while True:
        refilled = False
        for r in np.flatnonzero(done):
            if owner[r] >= 0:
                out[owner[r]], owner[r] = seq[r, :t[r]].copy(), -1
            if waiting:
                owner[r] = waiting.popleft()
                _set_row(host, r, ctxs[owner[r]], regions_of)
                seq[r], t[r], done[r], refilled = 0, 0, False, True
        if done.all():
            return out
        if refilled:  # every row again: the projection is per row, and one shape compiles once
            inp["projected"] = _project(graphdef, state, {k: host[k] for k in REGION_KEYS})
        stop_at = done.sum() + (max(1, n // REFILL) if waiting else n)
        carry = _greedy_stage(graphdef, state, inp, {"seq": seq, "t": t, "done": done},
                              _buffer(inp["fixed"], t, done, lt_max), np.int32(stop_at))
        seq, t, done = (np.array(carry[k]) for k in ("seq", "t", "done"))  # writable host copies


def generate(model, pairs, regions=None, *, beam=1, max_len=150, batch_size=32, budget=None,
             length_penalty=1.0, no_repeat_ngram=0) -> list[np.ndarray]:
    """Output ids (no [STOP]) for each pair, in input order: greedy when beam == 1, else beam search."""
    if beam < 1:
        raise ValueError(f"beam={beam}: 1 (greedy) or more (beam width)")
    if beam == 1:
        return greedy(model, pairs, regions, max_len=max_len, batch_size=batch_size, budget=budget)
    from bertgen_jax.beam import beam_search  # noqa: PLC0415 (temporary, until decode is a package)
    return [ids for ids, _ in beam_search(model, pairs, regions, beam=beam, max_len=max_len, batch_size=batch_size,
                                          length_penalty=length_penalty, no_repeat_ngram=no_repeat_ngram,
                                          budget=budget)]
