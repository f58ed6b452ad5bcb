"""Pretrained weights in and out: Hugging Face BERT, VL-BERT and BERTGEN checkpoints -> BertGen.

Every checkpoint is first read into a flat {name: numpy array} dict, its names rewritten to
one canonical spelling (our module path with PyTorch leaf names, e.g.
`layers.3.attention.query.weight`), and then placed into the model by `_place`. Init modes:

  random   fresh weights
  bert     text parts from a Hugging Face BERT checkpoint, vision parts fresh
  visual   everything from a VL-BERT checkpoint
  hybrid   mBERT text parts + VL-BERT vision, position and token-type parts (the paper's init)
  bertgen  everything from a full BERTGEN checkpoint (VL-BERT naming)
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import re
import shutil

import numpy as np
from flax import nnx

from bertgen_jax import vocab
from bertgen_jax.errors import ConfigError
from bertgen_jax.model import BertGen, ModelConfig

log = logging.getLogger(__name__)

INIT_MODES = ("random", "bert", "visual", "hybrid", "bertgen")

# VL-BERT / BERTGEN names -> Hugging Face-style names (after `module.` is stripped).
_VLBERT_RENAMES = [
    (r"^vlbert\.embedding_LayerNorm\.", "embeddings.LayerNorm."),
    (r"^vlbert\.(word_embeddings|position_embeddings|token_type_embeddings|end_embedding|"
     r"visual_ln_text|visual_ln_object)\.", r"embeddings.\1."),
    (r"^object_linguistic_embeddings\.", "embeddings.image_embedding."),
    (r"^image_feature_extractor\.obj_downsample\.1\.", "embeddings.region_proj."),
    (r"^vlbert\.encoder\.", "encoder."),
    (r"^vlbert\.mlm_head\.predictions\.", "cls.predictions."),
]
# Hugging Face BERT names (no `bert.` prefix) <-> canonical names (our module paths), one
# table read both ways: loading renames left to right, export right to left.
_TEXT_NAMES = [
    ("embeddings.word_embeddings.", "embeddings.word_embeddings."),
    ("embeddings.position_embeddings.", "embeddings.position_embeddings."),
    ("embeddings.token_type_embeddings.", "embeddings.token_type_embeddings."),
    ("embeddings.LayerNorm.", "embeddings.layer_norm."),
    ("encoder.layer.{n}.attention.self.{qkv}.", "layers.{n}.attention.{qkv}."),
    ("encoder.layer.{n}.attention.output.dense.", "layers.{n}.attention.output."),
    ("encoder.layer.{n}.attention.output.LayerNorm.", "layers.{n}.attention_ln."),
    ("encoder.layer.{n}.intermediate.dense.", "layers.{n}.intermediate."),
    ("encoder.layer.{n}.output.dense.", "layers.{n}.output."),
    ("encoder.layer.{n}.output.LayerNorm.", "layers.{n}.output_ln."),
    ("cls.predictions.transform.dense.", "mlm_head.dense."),
    ("cls.predictions.transform.LayerNorm.", "mlm_head.layer_norm."),
    ("cls.predictions.bias", "mlm_head.bias"),
]
_SLOTS = {"n": r"(?P<n>\d+)", "qkv": r"(?P<qkv>query|key|value)"}


def _rename(name: str, to_canonical: bool) -> str | None:
    """Rename a prefix by `_TEXT_NAMES`; None when no entry matches."""
    for hf, ours in _TEXT_NAMES:
        src, dst = (hf, ours) if to_canonical else (ours, hf)
        pattern = "^" + re.sub(r"\\\{(\w+)\\\}", lambda m: _SLOTS[m.group(1)], re.escape(src))
        m = re.match(pattern, name)
        if m:
            return dst.format(**m.groupdict()) + name[m.end():]
    return None


# Present in checkpoints, deliberately not loaded: tied copies, the pooler, other heads' parts,
# and the original's masked-region pre-training tables (object_mask_visual_embedding,
# object_mask_word_embedding, aux_text_visual_embedding), which BERTGEN's tasks never use.
# Matched after `module.` and `vlbert.` are stripped, so either spelling of a key lands here.
_IGNORED = re.compile(r"^(cls\.predictions\.decoder\.|pooler\.|cls\.seq_relationship\.|"
                      r"embeddings\.position_ids$|mvrc_head\.|relationsip_head\.|final_mlp\.|"
                      r"object_mask_visual_embedding\.|object_mask_word_embedding\.|"
                      r"aux_text_visual_embedding\.|image_feature_extractor\.(?!obj_downsample\.1\.))")

# Which canonical names each source provides in `hybrid` (docs/specification.md, "Initialisation").
_HYBRID_FROM_VLBERT = re.compile(
    r"^embeddings\.(region_proj|visual_ln_text|visual_ln_object|end_embedding|image_embedding|"
    r"token_type_embeddings|position_embeddings)\.")
_HYBRID_FROM_BERT = re.compile(
    r"^(layers\.|embeddings\.word_embeddings\.|embeddings\.layer_norm\.|mlm_head\.)")


@dataclasses.dataclass
class LoadReport:
    loaded: dict = dataclasses.field(default_factory=dict)  # canonical name -> source
    missing: list = dataclasses.field(default_factory=list)  # model parts with no source value
    unexpected: list = dataclasses.field(default_factory=list)  # checkpoint keys we cannot place
    reinitialised: list = dataclasses.field(default_factory=list)  # fresh by design, or partly
    ignored: list = dataclasses.field(default_factory=list)  # checkpoint keys skipped knowingly

    def summary(self) -> str:
        lines = [f"loaded {len(self.loaded)}, missing {len(self.missing)}, unexpected "
                 f"{len(self.unexpected)}, re-initialised {len(self.reinitialised)}, "
                 f"ignored {len(self.ignored)}"]
        for name in ("missing", "unexpected", "reinitialised", "ignored"):
            if getattr(self, name):
                lines.append(f"  {name}: " + ", ".join(getattr(self, name)))
        return "\n".join(lines)


# ---------------------------------------------------------------------------- reading

def _checkpoint_file(path: str) -> str:
    if not os.path.isdir(path):
        if not os.path.exists(path):
            raise FileNotFoundError(f"checkpoint {path} does not exist")
        return path
    for name in ("model.safetensors", "pytorch_model.bin"):
        if os.path.exists(os.path.join(path, name)):
            return os.path.join(path, name)
    raise FileNotFoundError(f"{path} holds neither model.safetensors nor pytorch_model.bin")


def read_state_dict(path: str) -> dict[str, np.ndarray]:
    """Raw {key: float32 array} of a checkpoint file or Hugging Face directory."""
    file = _checkpoint_file(path)
    if file.endswith(".safetensors"):
        from safetensors.numpy import load_file
        raw = load_file(file)
    else:
        try:
            import torch
        except ImportError as e:
            raise ImportError(f"reading {file} needs torch (pip install torch); "
                              "or convert it to model.safetensors") from e
        raw = torch.load(file, map_location="cpu", weights_only=True)
        if isinstance(raw, dict) and "state_dict" in raw:
            raw = raw["state_dict"]
        raw = {k: v.float().numpy() if v.is_floating_point() else v.numpy()
               for k, v in raw.items() if hasattr(v, "numpy")}
    return {k: np.asarray(v) for k, v in raw.items()}


def canonical_names(state: dict[str, np.ndarray]) -> tuple[dict[str, np.ndarray], list[str]]:
    """Rename any supported checkpoint's keys to canonical names; returns (named, ignored keys)."""
    named, ignored = {}, []
    for key, value in state.items():
        name = key[len("module."):] if key.startswith("module.") else key
        name = re.sub(r"\.gamma$", ".weight", re.sub(r"\.beta$", ".bias", name))  # old BERT files
        for pattern, repl in _VLBERT_RENAMES:
            name = re.sub(pattern, repl, name)
        for prefix in ("bert.", "vlbert."):
            if name.startswith(prefix):
                name = name[len(prefix):]
        if _IGNORED.match(name):
            ignored.append(key)
            continue
        named[_rename(name, to_canonical=True) or name] = value
    return named, ignored


def config_from_checkpoint(named: dict[str, np.ndarray], cfg: ModelConfig, hf_config: dict | None = None,
                           source: str = "checkpoint"):
    """`cfg` with the sizes the checkpoint dictates (vocabulary, width, depth, positions, and the
    head count when its config.json records one)."""
    changes = {}
    if "embeddings.word_embeddings.weight" in named:
        changes["vocab_size"], changes["hidden_size"] = named["embeddings.word_embeddings.weight"].shape
    layers = {int(m.group(1)) for k in named if (m := re.match(r"layers\.(\d+)\.", k))}
    if layers:
        changes["num_layers"] = max(layers) + 1
    if "layers.0.intermediate.weight" in named:
        changes["intermediate_size"] = named["layers.0.intermediate.weight"].shape[0]
    if "embeddings.position_embeddings.weight" in named:
        changes["max_positions"] = named["embeddings.position_embeddings.weight"].shape[0]
    if hf_config and "num_attention_heads" in hf_config:
        changes["num_heads"] = hf_config["num_attention_heads"]
    if "embeddings.region_proj.weight" in named:
        changes["feature_dim"] = named["embeddings.region_proj.weight"].shape[1] - cfg.geometry_dim
    cfg = dataclasses.replace(cfg, **changes)
    check_heads(cfg, source, "" if "num_heads" in changes else "the checkpoint does not record num_heads")
    return cfg


def check_heads(cfg: ModelConfig, source: str, note: str = "") -> None:
    """A head count that is set (0 or None: not) and divides the width, else one line saying
    what to pass; `note` says why the count is the caller's. No tensor shape gives the head
    count and VL-BERT/BERTGEN files do not record it (their YAML does): a guess would build a
    model that loads cleanly and computes something else."""
    if not cfg.num_heads:
        problem = note or "model.num_heads is not set"
        fix = f"pass model.num_heads=N (N divides hidden_size {cfg.hidden_size}; BERT-base has 12)"
    elif cfg.hidden_size % cfg.num_heads:
        problem = (f"{note} and " if note else "") + \
            f"model.num_heads={cfg.num_heads} does not divide hidden_size {cfg.hidden_size}"
        fix = "pass model.num_heads=N that divides it"
    else:
        return
    raise ConfigError(f"{source}: {problem}; {fix}")


def read_checkpoint(path: str) -> tuple[dict[str, np.ndarray], list[str], dict | None]:
    """(canonical arrays, ignored keys, Hugging Face config.json or None) of a checkpoint."""
    named, ignored = canonical_names(read_state_dict(path))
    hf_config = None
    cfg_file = os.path.join(path, "config.json") if os.path.isdir(path) else None
    if cfg_file and os.path.exists(cfg_file):
        with open(cfg_file) as f:
            hf_config = json.load(f)
    return named, ignored, hf_config


# ---------------------------------------------------------------------------- placing

_LEAF = {"kernel": "weight", "scale": "weight", "embedding": "weight", "bias": "bias"}
_BARE = {"embeddings.end_embedding": "embeddings.end_embedding.weight",
         "embeddings.image_embedding": "embeddings.image_embedding.weight",
         "mlm_head.bias": "mlm_head.bias"}


def _model_params(model: BertGen) -> dict[str, nnx.Variable]:
    """Canonical name -> model parameter (PyTorch leaf names: weight for kernels/scales/tables)."""
    out = {}
    for path, var in nnx.to_flat_state(nnx.state(model, nnx.Param)):
        name = ".".join(str(p) for p in path)
        if name in _BARE:
            out[_BARE[name]] = var
        else:
            head, leaf = name.rsplit(".", 1)
            out[f"{head}.{_LEAF[leaf]}"] = var
    return out


def _to_ours(name: str, value: np.ndarray, var: nnx.Variable) -> np.ndarray:
    """A PyTorch-layout array in the layout of `var` (Linear weights are transposed)."""
    target = tuple(var.shape)
    if name.endswith(".weight") and value.ndim == 2 and value.shape[::-1] == target and \
            not re.search(r"embeddings\.\w+_embeddings\.weight$", name):
        value = value.T
    if value.shape != target and value.size == int(np.prod(target)) and value.ndim != len(target):
        value = value.reshape(target)  # [1, H] tables stored as [H] here
    return value


def _place(model: BertGen, named: dict, source: str, report: LoadReport, take=None):
    """Copy checkpoint arrays into the model; `take` filters canonical names for this source."""
    params = _model_params(model)
    for name, value in named.items():
        if take is not None and not take.match(name):
            continue
        if name not in params:
            report.unexpected.append(f"{name} ({source})")
            continue
        var = params[name]
        value = _to_ours(name, value, var)
        if name == "embeddings.token_type_embeddings.weight" and value.shape[0] < var.shape[0]:
            # BERT has 2 type rows, BERTGEN 3: keep the fresh rows for the missing types.
            merged = np.array(var[...])
            merged[: value.shape[0]] = value
            report.reinitialised.append(f"{name} rows {value.shape[0]}..{var.shape[0] - 1}")
            value = merged
        if value.shape != tuple(var.shape):
            raise ValueError(f"{source}: parameter {name} has shape {value.shape} in the checkpoint "
                             f"but {tuple(var.shape)} in the model")
        var[...] = np.asarray(value, np.float32)
        report.loaded[name] = source


def init_model(cfg: ModelConfig, mode: str = "random", *, seed: int = 0, bert_path: str | None = None,
               vlbert_path: str | None = None, bertgen_path: str | None = None):
    """Build a BertGen and fill it according to `mode`; returns (model, cfg actually used, report)."""
    if mode not in INIT_MODES:
        raise ConfigError(f"init mode {mode!r} is not one of {INIT_MODES}")
    needs = {"bert": [("bert_path", bert_path)], "visual": [("vlbert_path", vlbert_path)],
             "hybrid": [("bert_path", bert_path), ("vlbert_path", vlbert_path)],
             "bertgen": [("bertgen_path", bertgen_path)]}.get(mode, [])
    missing = [n for n, p in needs if not p]
    if missing:
        raise ConfigError(f"init mode {mode!r} needs {', '.join(missing)}")

    sources = []  # (label, canonical arrays, filter)
    if mode in ("bert", "hybrid"):
        named, ignored, hf_config = read_checkpoint(bert_path)
        cfg = config_from_checkpoint(named, cfg, hf_config, source=bert_path)
        sources.append((bert_path, named, ignored, _HYBRID_FROM_BERT if mode == "hybrid" else None))
    if mode in ("visual", "hybrid", "bertgen"):
        path = bertgen_path if mode == "bertgen" else vlbert_path
        named, ignored, _ = read_checkpoint(path)
        if mode != "hybrid":
            cfg = config_from_checkpoint(named, cfg, source=path)
        sources.append((path, named, ignored, _HYBRID_FROM_VLBERT if mode == "hybrid" else None))

    if mode == "random":
        check_heads(cfg, "init random")
    model = BertGen(cfg, nnx.Rngs(seed))
    report = LoadReport()
    for label, named, ignored, take in sources:
        report.ignored += ignored
        _place(model, named, label, report, take)
    if mode != "random":
        fresh = sorted(set(_model_params(model)) - set(report.loaded))
        # `bert` leaves the vision parts fresh by design; any other mode should fill everything.
        (report.reinitialised if mode == "bert" else report.missing).extend(fresh)
        log.info("init %s: %s", mode, report.summary())
    return model, cfg, report


# ---------------------------------------------------------------------------- export

def export_hf(model: BertGen, out_dir: str, vocab_file: str | None = None) -> None:
    """Write the text model as a Hugging Face `BertForMaskedLM` directory.

    The whole-image term that BERTGEN adds to every text token is, without an image, just
    visual_ln_text's bias; it is folded into the position table so text-only outputs match.
    """
    from safetensors.numpy import save_file
    cfg = model.cfg
    os.makedirs(out_dir, exist_ok=True)
    canonical = {n: np.asarray(v[...]) for n, v in _model_params(model).items()}
    canonical["embeddings.position_embeddings.weight"] = (
        canonical["embeddings.position_embeddings.weight"] + canonical["embeddings.visual_ln_text.bias"])
    state = {}
    for name, value in canonical.items():
        hf = _rename(name, to_canonical=False)
        if hf is None:
            continue  # vision parts: BERT has no place for them
        hf = hf if hf.startswith("cls.") else "bert." + hf
        if value.ndim == 2 and not name.startswith("embeddings."):
            value = value.T  # back to PyTorch's [out, in]
        state[hf] = np.ascontiguousarray(value, np.float32)
    state["cls.predictions.decoder.weight"] = state["bert.embeddings.word_embeddings.weight"].copy()
    state["cls.predictions.decoder.bias"] = state["cls.predictions.bias"].copy()
    save_file(state, os.path.join(out_dir, "model.safetensors"))
    hf_config = {
        "architectures": ["BertForMaskedLM"], "model_type": "bert", "vocab_size": cfg.vocab_size,
        "hidden_size": cfg.hidden_size, "num_hidden_layers": cfg.num_layers,
        "num_attention_heads": cfg.num_heads, "intermediate_size": cfg.intermediate_size,
        "hidden_act": "gelu", "hidden_dropout_prob": cfg.dropout,
        "attention_probs_dropout_prob": cfg.attention_dropout, "max_position_embeddings": cfg.max_positions,
        "type_vocab_size": cfg.type_vocab_size, "layer_norm_eps": cfg.layer_norm_eps,
        "initializer_range": 0.02, "pad_token_id": vocab.PAD_ID, "tie_word_embeddings": True,
    }
    with open(os.path.join(out_dir, "config.json"), "w") as f:
        json.dump(hf_config, f, indent=2)
    if vocab_file:
        shutil.copy(vocab_file, os.path.join(out_dir, "vocab.txt"))



def config_from_hf(path: str, cfg: ModelConfig | None = None) -> ModelConfig:
    """ModelConfig with the sizes of a Hugging Face BERT config.json (a file or its directory)."""
    file = os.path.join(path, "config.json") if os.path.isdir(path) else path
    with open(file) as f:
        hf = json.load(f)
    keys = {"vocab_size": "vocab_size", "hidden_size": "hidden_size", "num_layers": "num_hidden_layers",
            "num_heads": "num_attention_heads", "intermediate_size": "intermediate_size",
            "max_positions": "max_position_embeddings", "layer_norm_eps": "layer_norm_eps",
            "dropout": "hidden_dropout_prob", "attention_dropout": "attention_probs_dropout_prob"}
    if hf.get("hidden_act", "gelu") != "gelu":
        raise ValueError(f"{file}: hidden_act {hf['hidden_act']!r}; BERTGEN uses exact (erf) 'gelu'")
    return dataclasses.replace(cfg or ModelConfig(), **{k: hf[v] for k, v in keys.items() if v in hf})
