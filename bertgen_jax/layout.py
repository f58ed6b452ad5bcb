"""The batch contract: what each position of a row holds (token kinds), its token type, and the
keys of a model batch. The ground floor of the package: data, model and decode import it, and
it imports nothing of ours. docs/specification.md describes the layout these numbers encode."""

# Token kinds: what each position of a row holds.
KIND_PAD, KIND_TEXT, KIND_REGION, KIND_END = 0, 1, 2, 3

# Token types (the token-type embedding's row): every text token, source and target alike, is
# type 0; region tokens and [END] are type 2. Row 1 exists (VL-BERT's table) but is never used.
TYPE_TEXT, TYPE_VISUAL = 0, 2

TASKS = ("ic", "mmt", "mt")  # image captioning, multimodal translation, text translation

# Keys of a model batch; region arrays may be absent for text-only batches.
BATCH_KEYS = {
    "token_ids": "[B, L] int32 vocabulary ids at text positions (ignored elsewhere)",
    "token_kind": "[B, L] int32 KIND_PAD / KIND_TEXT / KIND_REGION / KIND_END",
    "token_type": "[B, L] int32 token type (text 0, regions and [END] 2)",
    "positions": "[B, L] int32 position ids (text 0..T-1, regions T, [END] T+1)",
    "region_index": "[B, L] int32 region slot of a region token, or of the whole-image "
    "region of a text token's example; -1 for none",
    "segment_ids": "[B, L] int32 optional; 0 = padding, tokens attend within their segment",
    "attention_rank": "[B, L] int32 optional (one-pass rows only): within a segment a token sees "
    "the tokens of even rank not above its own, and itself (data/one_pass.py); absent = all see all",
    "region_features": "[B, R, F] float32 RoI appearance features",
    "region_boxes": "[B, R, 4] float32 pixel boxes (x1, y1, x2, y2)",
    "region_image_wh": "[B, R, 2] float32 width and height of each region's image",
}
