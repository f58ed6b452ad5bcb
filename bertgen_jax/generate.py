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
import sys

import numpy as np

from bertgen_jax import checkpoint, decode, vocab
from bertgen_jax.data.feature_store import FeatureStore
from bertgen_jax.data.unroll import Pair
from bertgen_jax.metrics import ids_to_text
from bertgen_jax.model import BertGen


class Generator:
    """A model, its tokenizer and (for images) a feature store."""

    def __init__(self, model: BertGen, vocab_file: str, store: FeatureStore | None = None):
        self.model, self.vocab_file, self.store = model, vocab_file, store
        self.tokenizer = vocab.load_tokenizer(vocab_file)
        model.eval()

    @classmethod
    def load(cls, path: str, step: int | None = None, features: str | None = None) -> "Generator":
        """From a training workdir (checkpoint `step`, default latest) or an exported directory;
        `path` may be relative or start with `~`."""
        model = checkpoint.load_model(path, step)
        vocab_file = checkpoint.vocab_file(path)
        store = FeatureStore(checkpoint.resolve(features)) if features else None
        return cls(model, vocab_file, store)

    def export(self, out_dir: str) -> None:
        """model_config.json + vocab.txt + params.safetensors: everything `load` needs."""
        checkpoint.export_model(self.model, self.vocab_file, out_dir)

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
