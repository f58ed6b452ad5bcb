"""Caption images and translate text with a trained model: a small Python API and a CLI.

    python -m bertgen_jax.generate --model runs/multitask --task caption --lang en \
        --features STORE [--images ID ...]
    python -m bertgen_jax.generate --model runs/multitask --task translate --lang de \
        --input sources.txt [--features STORE --images-file ids.txt] [--beam 4]
    python -m bertgen_jax.generate --model runs/multitask --export exported/

`--model` is a training workdir (its latest checkpoint, or `--step N`) or an exported directory
(`model_config.json`, `vocab.txt`, `params.safetensors`). `--features` is a feature store made by
`python -m bertgen_jax.data.prepare` (image ids as the store names them).
"""

from __future__ import annotations

import argparse
import json
import os
import sys

import jax
import numpy as np
from flax import nnx

from bertgen_jax import decode, vocab
from bertgen_jax.checkpoint import MODEL_CONFIG, VOCAB, save_model_files
from bertgen_jax.data.feature_store import FeatureStore
from bertgen_jax.data.unroll import Pair
from bertgen_jax.metrics import ids_to_text
from bertgen_jax.model import BertGen, ModelConfig

PARAMS = "params.safetensors"


class Generator:
    """A model, its tokenizer and (for images) a feature store."""

    def __init__(self, model: BertGen, vocab_file: str, store: FeatureStore | None = None):
        self.model, self.vocab_file, self.store = model, vocab_file, store
        self.tokenizer = vocab.load_tokenizer(vocab_file)
        model.eval()

    @classmethod
    def load(cls, path: str, step: int | None = None, features: str | None = None) -> "Generator":
        """From a training workdir (checkpoint `step`, default latest) or an exported directory."""
        for name in (MODEL_CONFIG, VOCAB):
            if not os.path.isfile(os.path.join(path, name)):
                raise FileNotFoundError(f"{path}: no {name}; expected a training workdir or a directory "
                                        "written by `python -m bertgen_jax.generate --export`")
        with open(os.path.join(path, MODEL_CONFIG), encoding="utf-8") as f:
            cfg = ModelConfig(**json.load(f))
        model = nnx.eval_shape(lambda: BertGen(cfg, nnx.Rngs(0)))
        graphdef, abstract, rest = nnx.split(model, nnx.Param, ...)
        if os.path.isfile(os.path.join(path, PARAMS)):
            params = _read_flat(os.path.join(path, PARAMS))
        else:
            params = _read_checkpoint(path, step, nnx.to_pure_dict(abstract))
        state = jax.tree.map(lambda x: x, abstract)
        nnx.replace_by_pure_dict(state, params)
        rest = jax.tree.map(lambda x: jax.random.key(0) if jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key)
                            else np.zeros(x.shape, x.dtype), rest)
        store = FeatureStore(features) if features else None
        return cls(nnx.merge(graphdef, state, rest), os.path.join(path, VOCAB), store)

    def export(self, out_dir: str) -> None:
        """model_config.json + vocab.txt + params.safetensors: everything `load` needs."""
        from safetensors.numpy import save_file
        os.makedirs(out_dir, exist_ok=True)
        save_file(_flatten(nnx.to_pure_dict(nnx.state(self.model, nnx.Param))), os.path.join(out_dir, PARAMS))
        save_model_files(out_dir, self.model.cfg, self.vocab_file)

    # -- generation --------------------------------------------------------------------------

    def _image(self, image_id: str) -> tuple[int, int]:
        if self.store is None:
            raise ValueError("images need a feature store: pass features=STORE_DIR")
        if image_id not in self.store:
            raise KeyError(f"image {image_id!r} is not in the feature store {self.store.path}")
        i = self.store.index(image_id)
        return i, self.store.num_boxes(i)

    def _run(self, pairs, beam, max_len, batch_size, budget=None) -> list[str]:
        if beam < 1:
            raise ValueError(f"beam={beam}: 1 (greedy) or more (beam width)")
        if not pairs:
            return []
        ids = decode.generate(self.model, pairs, self.store, beam=beam, max_len=max_len, batch_size=batch_size,
                              budget=budget)
        return [ids_to_text(self.tokenizer, i) for i in ids]

    def caption(self, image_ids, lang: str, *, beam: int = 1, max_len: int = 150, batch_size: int = 32):
        """One caption in `lang` per image id."""
        pairs = [Pair("ic", lang, np.zeros(0, np.int32), np.zeros(0, np.int32), *self._image(i)) for i in image_ids]
        return self._run(pairs, beam, max_len, batch_size)

    def translate(self, sources, lang: str, image_ids=None, *, beam: int = 1, max_len: int | None = None,
                  batch_size: int = 32, budget: int | None = None):
        """Translations into `lang`; with image ids (one per source) multimodal translation.
        `budget`: context tokens at most (longer sources are truncated, as in training)."""
        if image_ids is not None and len(image_ids) != len(sources):
            raise ValueError(f"{len(sources)} sources but {len(image_ids)} image ids")
        pairs = []
        for n, text in enumerate(sources):
            src = np.asarray(self.tokenizer.encode(text, add_special_tokens=False), np.int32)
            if len(src) == 0:
                raise ValueError(f"source {n + 1} of {len(sources)} is empty: nothing to translate")
            image = self._image(image_ids[n]) if image_ids is not None else (-1, 0)
            pairs.append(Pair("mmt" if image_ids is not None else "mt", lang, src, np.zeros(0, np.int32), *image))
        max_len = max_len or (150 if image_ids is not None else 300)
        return self._run(pairs, beam, max_len, batch_size, budget)


def _flatten(tree, prefix=""):
    out = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        out.update(_flatten(value, name + "/") if isinstance(value, dict) else {name: np.asarray(value)})
    return out


def _read_flat(path: str) -> dict:
    from safetensors.numpy import load_file
    tree: dict = {}
    for name, value in load_file(path).items():
        node = tree
        *parents, leaf = name.split("/")
        for p in parents:
            node = node.setdefault(int(p) if p.isdigit() else p, {})
        node[int(leaf) if leaf.isdigit() else leaf] = value
    return tree


def _read_checkpoint(workdir: str, step: int | None, abstract: dict) -> dict:
    import orbax.checkpoint as ocp
    directory = os.path.join(workdir, "checkpoints")
    steps = sorted(int(s) for s in os.listdir(directory) if s.isdigit()) if os.path.isdir(directory) else []
    if not steps or (step is not None and step not in steps):
        wanted = "no checkpoints" if step is None else f"no checkpoint {step}"
        raise FileNotFoundError(f"{directory}: {wanted} (have {steps})")
    step = steps[-1] if step is None else step
    return ocp.StandardCheckpointer().restore(os.path.join(directory, str(step), "params"), abstract)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", required=True, help="training workdir or exported directory")
    p.add_argument("--step", type=int, default=None, help="checkpoint step (default: latest)")
    p.add_argument("--export", metavar="DIR", help="write the model as an exported directory and stop")
    p.add_argument("--task", choices=("caption", "translate"))
    p.add_argument("--lang", choices=sorted(vocab.LANG_TAGS), help="target language")
    p.add_argument("--features", help="feature store directory (captioning, multimodal translation)")
    p.add_argument("--images", nargs="*", help="image ids (default for captioning: every image in the store)")
    p.add_argument("--images-file", help="file with one image id per line (one per source line)")
    p.add_argument("--input", help="source sentences, one per line (default: stdin)")
    p.add_argument("--output", help="write hypotheses here (default: stdout)")
    p.add_argument("--beam", type=int, default=1, help="1: greedy (as the original); > 1: beam search")
    p.add_argument("--max-len", type=int, default=None, help="target wordpieces at most (150 / MT 300)")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--budget", type=int, default=None, help="translation: context tokens at most "
                   "(longer sources are truncated); default: no limit but the model's positions")
    args = p.parse_args(argv)
    try:
        return _generate(p, args)
    except (FileNotFoundError, KeyError, ValueError) as err:
        print(f"error: {err.args[0] if isinstance(err, KeyError) else err}", file=sys.stderr)
        return 1


def _lines(path: str | None, what: str) -> list[str]:
    """The lines of a file (stdin for None), one item each; a blank one is an error naming it."""
    with (open(path, encoding="utf-8") if path else sys.stdin) as f:
        lines = [line.strip() for line in f]
    for n, line in enumerate(lines, start=1):
        if not line:
            raise ValueError(f"{path or 'stdin'} line {n}: empty {what} (one {what} per line, no blank lines)")
    return lines


def _generate(p, args) -> int:
    gen = Generator.load(args.model, args.step, args.features)
    if args.export:
        gen.export(args.export)
        print(f"exported to {args.export}", file=sys.stderr)
        return 0
    if not args.task or not args.lang:
        p.error("--task and --lang are needed (or --export DIR)")
    images = args.images
    if args.images_file:
        images = _lines(args.images_file, "image id")
    if args.task == "caption":
        if gen.store is None:
            p.error("--task caption needs --features STORE")
        out = gen.caption(images or gen.store.ids, args.lang, beam=args.beam, max_len=args.max_len or 150,
                          batch_size=args.batch_size)
    else:
        sources = _lines(args.input, "source sentence")
        out = gen.translate(sources, args.lang, images, beam=args.beam, max_len=args.max_len,
                            batch_size=args.batch_size, budget=args.budget)
    text = "".join(line + "\n" for line in out)
    if args.output:
        with open(args.output, "w", encoding="utf-8") as f:
            f.write(text)
    else:
        sys.stdout.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
