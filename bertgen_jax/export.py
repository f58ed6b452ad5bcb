"""A trained model written in another code base's format.

    python -m bertgen_jax.export --model runs/multitask --format bertgen out/bertgen.model
    python -m bertgen_jax.export --model runs/multitask --format hf out/hf_bert/

`--model` is a training workdir (latest checkpoint, or `--step N`) or an exported directory.

`bertgen`: the original BERTGEN code's checkpoint, a `torch.save` dictionary
`{"state_dict": {...}}` whose keys are those its model (`BERTGENMultitaskTraining` and the
generation modules, with precomputed features, the MLM head and no pooler, relationship or
MVRC head) has under `torch.nn.DataParallel`, i.e. prefixed `module.`; the original loads it
with `smart_load_model_state_dict`, ours with `weights.init_model(cfg, "bertgen",
bertgen_path=...)`. This is the inverse of weights.py's VL-BERT/BERTGEN key table
(docs/specification.md, "Initialisation"):
  - PyTorch layouts: Linear weights [out, in]; `[END]` and `[IMG]` as [1, H] embedding tables;
  - the MLM decoder weight is the word embedding table itself (tied, as the original's
    `BertLMPredictionHead` ties it): the same tensor under both keys, stored once;
  - two tables the original model holds but BERTGEN's tasks never read are written as zeros:
    `object_mask_visual_embedding` [1, feature size] (the original initialises it to zeros
    too) and `aux_text_visual_embedding` [1, H].

`hf`: the text model as a Hugging Face `BertForMaskedLM` directory (`weights.export_hf`).
"""

from __future__ import annotations

import argparse
import os
import re
import sys
from collections import OrderedDict

import numpy as np
from flax import nnx

from bertgen_jax import checkpoint, weights
from bertgen_jax.errors import CheckpointError, debug_requested
from bertgen_jax.model import BertGen

FORMATS = ("bertgen", "hf")
_LEAF = {"kernel": "weight", "scale": "weight", "embedding": "weight", "bias": "bias"}
# Our module path -> the original's (after `module.`), matched whole.
_MODULES = (
    (r"embeddings\.(word_embeddings|end_embedding|position_embeddings|token_type_embeddings)", r"vlbert.\1"),
    (r"embeddings\.layer_norm", "vlbert.embedding_LayerNorm"),
    (r"embeddings\.(visual_ln_text|visual_ln_object)", r"vlbert.\1"),
    (r"embeddings\.image_embedding", "object_linguistic_embeddings"),
    (r"embeddings\.region_proj", "image_feature_extractor.obj_downsample.1"),
    (r"layers\.(\d+)\.attention\.(query|key|value)", r"vlbert.encoder.layer.\1.attention.self.\2"),
    (r"layers\.(\d+)\.attention\.output", r"vlbert.encoder.layer.\1.attention.output.dense"),
    (r"layers\.(\d+)\.attention_ln", r"vlbert.encoder.layer.\1.attention.output.LayerNorm"),
    (r"layers\.(\d+)\.intermediate", r"vlbert.encoder.layer.\1.intermediate.dense"),
    (r"layers\.(\d+)\.output", r"vlbert.encoder.layer.\1.output.dense"),
    (r"layers\.(\d+)\.output_ln", r"vlbert.encoder.layer.\1.output.LayerNorm"),
    (r"mlm_head\.dense", "vlbert.mlm_head.predictions.transform.dense"),
    (r"mlm_head\.layer_norm", "vlbert.mlm_head.predictions.transform.LayerNorm"),
    (r"mlm_head", "vlbert.mlm_head.predictions"),  # its bias
)
_LAYER_PARTS = ("attention.self.query", "attention.self.key", "attention.self.value", "attention.output.dense",
                "attention.output.LayerNorm", "intermediate.dense", "output.dense", "output.LayerNorm")
TIED = "module.vlbert.mlm_head.predictions.decoder.weight"
WORDS = "module.vlbert.word_embeddings.weight"


def original_keys(num_layers: int) -> list[str]:
    """Every key of the original model's state_dict, in its order (modules as registered)."""
    wb = ("weight", "bias")
    keys = ["image_feature_extractor.obj_downsample.1.weight", "image_feature_extractor.obj_downsample.1.bias",
            "object_linguistic_embeddings.weight", "object_mask_visual_embedding.weight",
            "aux_text_visual_embedding.weight", "vlbert.word_embeddings.weight", "vlbert.end_embedding.weight",
            "vlbert.position_embeddings.weight", "vlbert.token_type_embeddings.weight"]
    keys += [f"vlbert.{m}.{p}" for m in ("embedding_LayerNorm", "visual_ln_text", "visual_ln_object") for p in wb]
    keys += [f"vlbert.encoder.layer.{n}.{m}.{p}" for n in range(num_layers) for m in _LAYER_PARTS for p in wb]
    keys += ["vlbert.mlm_head.predictions.bias"]
    keys += [f"vlbert.mlm_head.predictions.transform.{m}.{p}" for m in ("dense", "LayerNorm") for p in wb]
    keys += ["vlbert.mlm_head.predictions.decoder.weight"]
    return ["module." + k for k in keys]


def _original_name(path: tuple) -> tuple[str, bool]:
    """(the original's key of one of our parameters, whether it is a Linear kernel)."""
    parts = [str(p) for p in path]
    leaf = parts[-1] if parts[-1] in _LEAF else None
    module = ".".join(parts[:-1] if leaf else parts)
    for pattern, repl in _MODULES:
        if re.fullmatch(pattern, module):
            return "module." + re.sub(pattern, repl, module) + "." + (_LEAF[leaf] if leaf else "weight"), \
                leaf == "kernel"
    raise ValueError(f"parameter {'.'.join(parts)} has no place in a BERTGEN checkpoint")


def bertgen_state(model: BertGen) -> OrderedDict:
    """{original key: float32 array in the original's layout}, in `original_keys` order; the tied
    decoder key holds the very array of the word embeddings."""
    cfg = model.cfg
    state = {}
    for path, var in nnx.to_flat_state(nnx.state(model, nnx.Param)):
        key, kernel = _original_name(path)
        value = np.asarray(var[...], np.float32)
        if kernel:
            value = value.T  # ours [in, out], PyTorch's Linear [out, in]
        elif value.ndim == 1 and key.endswith(("end_embedding.weight", "object_linguistic_embeddings.weight")):
            value = value[None, :]  # a one-row embedding table
        state[key] = np.ascontiguousarray(value)
    state["module.object_mask_visual_embedding.weight"] = np.zeros((1, cfg.feature_dim), np.float32)
    state["module.aux_text_visual_embedding.weight"] = np.zeros((1, cfg.hidden_size), np.float32)
    state[TIED] = state[WORDS]
    keys = original_keys(cfg.num_layers)
    if set(state) != set(keys):
        raise ValueError(f"BERTGEN keys do not match: extra {sorted(set(state) - set(keys))}, "
                         f"missing {sorted(set(keys) - set(state))}")
    return OrderedDict((k, state[k]) for k in keys)


def save_bertgen(model: BertGen, path: str) -> None:
    """Write `bertgen_state(model)` as the original's torch checkpoint file (replaced whole)."""
    try:
        import torch  # noqa: PLC0415
    except ImportError as err:
        raise ValueError("--format bertgen writes a torch file and needs torch (pip install torch)") from err
    if os.path.isdir(path):
        raise ValueError(f"{path} is a directory; --format bertgen writes one file (e.g. {path}/bertgen.model)")
    tensors = OrderedDict()
    for key, value in bertgen_state(model).items():
        tensors[key] = tensors[WORDS] if key == TIED else torch.from_numpy(value.copy())
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = f"{path}.tmp"
    try:
        torch.save({"state_dict": tensors}, tmp)
        os.replace(tmp, path)
    finally:  # a failed save (a full disk) leaves no partial file behind
        if os.path.exists(tmp):
            os.remove(tmp)


def export(model_path: str, fmt: str, out: str, step: int | None = None) -> None:
    model = checkpoint.load_model(model_path, step)
    if model.cfg.objective != "unrolled":  # neither format records how the model was trained
        print(f"warning: {model_path} was trained with objective={model.cfg.objective!r}; the {fmt} format "
              "does not record it, and the original's code decodes with the unrolled layout, which this "
              "model was not trained for", file=sys.stderr)
    if fmt == "bertgen":
        save_bertgen(model, out)
    else:
        weights.export_hf(model, out, vocab_file=checkpoint.vocab_file(model_path))


def _step(text: str) -> int:
    if not text.isdigit():
        raise argparse.ArgumentTypeError(f"expected a checkpoint step, an integer >= 0, got {text!r}")
    return int(text)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", required=True, help="training workdir or exported directory")
    p.add_argument("--step", type=_step, default=None, help="checkpoint step (default: latest)")
    p.add_argument("--format", required=True, choices=FORMATS,
                   help="bertgen: the original's torch .model file; hf: a Hugging Face BertForMaskedLM directory")
    p.add_argument("out", help="the file (bertgen) or directory (hf) to write")
    args = p.parse_args(argv)
    try:
        export(args.model, args.format, args.out, args.step)
    except (OSError, KeyError, ValueError, CheckpointError) as err:
        if debug_requested():
            raise
        print(f"error: {err.args[0] if isinstance(err, KeyError) else err}", file=sys.stderr)
        return 1
    print(f"exported {args.model} as {args.format} to {args.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
