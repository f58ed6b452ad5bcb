"""Caption images and translate text with a trained model: a small Python API and a CLI.

    python -m bertgen_jax.generate --model runs/multitask --task caption --lang en \
        --features STORE [--images ID ...]
    python -m bertgen_jax.generate --model runs/multitask --task translate --lang de \
        --input sources.txt [--features STORE --images-file ids.txt] [--beam 4]
        [--do-sample --top-p 0.9 --seed 1 --num-return-sequences 3]    # 3 sampled lines per input
    python -m bertgen_jax.generate --model runs/multitask --export exported/

`--model` is a training workdir (its latest checkpoint, or `--step N`) or an exported directory
(`model_config.json`, `vocab.txt`, `params.safetensors`). `--features` is a feature store made by
`python -m bertgen_jax.data.prepare` (image ids as the store names them).

Exit codes: 0 done; 2 a bad flag (argparse's one `error:` line naming it); 1 any other problem,
one `error:` line (a missing model or store, an unknown image id, an input with a blank line or
no line at all: nothing is written). BERTGEN_DEBUG=1 shows the traceback instead.
"""

from __future__ import annotations

import argparse
import sys

import numpy as np

from bertgen_jax import checkpoint, decode, vocab
from bertgen_jax.data.feature_store import FeatureStore
from bertgen_jax.errors import CheckpointError, debug_requested
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

    def _run(self, pairs, beam, max_len, batch_size, budget=None, sampling=None) -> list:
        if beam < 1:
            raise ValueError(f"beam={beam}: 1 (greedy) or more (beam width)")
        sampling = sampling or {}
        decode.sampling.check(beam=beam, **sampling)  # bad options fail even with no input
        if not pairs:
            return []
        ids = decode.generate(self.model, pairs, self.store, beam=beam, max_len=max_len, batch_size=batch_size,
                              budget=budget, **sampling)
        text = lambda i: ids_to_text(self.tokenizer, i)
        return [[text(i) for i in per] if isinstance(per, list) else text(per) for per in ids]

    def caption(self, image_ids, lang: str, *, beam: int = 1, max_len: int = 150, batch_size: int = 32, **sampling):
        """One caption in `lang` per image id. sampling: decode.generate's do_sample, temperature,
        top_k, top_p, seed, num_return_sequences (N > 1: a list of N captions per image)."""
        pairs = [Pair("ic", lang, np.zeros(0, np.int32), np.zeros(0, np.int32), *self._image(i)) for i in image_ids]
        return self._run(pairs, beam, max_len, batch_size, sampling=sampling)

    def translate(self, sources, lang: str, image_ids=None, *, beam: int = 1, max_len: int | None = None,
                  batch_size: int = 32, budget: int | None = None, **sampling):
        """Translations into `lang`; with image ids (one per source) multimodal translation.
        `budget`: context tokens at most (longer sources are truncated, as in training);
        sampling: as caption's."""
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
        return self._run(pairs, beam, max_len, batch_size, budget, sampling)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", required=True, help="training workdir or exported directory")
    p.add_argument("--step", type=_at_least(0), default=None, help="checkpoint step (default: latest)")
    p.add_argument("--export", metavar="DIR", help="write the model as an exported directory and stop")
    p.add_argument("--task", choices=("caption", "translate"))
    p.add_argument("--lang", choices=sorted(vocab.LANG_TAGS), help="target language")
    p.add_argument("--features", help="feature store directory (captioning, multimodal translation)")
    p.add_argument("--images", nargs="*", help="image ids (default for captioning: every image in the store)")
    p.add_argument("--images-file", help="file with one image id per line (one per source line)")
    p.add_argument("--input", help="source sentences, one per line (default: stdin)")
    p.add_argument("--output", help="write hypotheses here (default: stdout)")
    p.add_argument("--beam", type=_at_least(1), default=1, help="1: greedy (as the original); > 1: beam search")
    p.add_argument("--max-len", type=_at_least(1), default=None, help="target wordpieces at most (150 / MT 300)")
    p.add_argument("--batch-size", type=_at_least(1), default=32)
    p.add_argument("--budget", type=_at_least(1), default=None, help="translation: context tokens at most "
                   "(longer sources are truncated); default: no limit but the model's positions")
    p.add_argument("--do-sample", action="store_true", help="draw each token instead of greedy/beam search")
    p.add_argument("--temperature", type=_number(float, lambda v: v > 0, "a number > 0"),
                   help="sampling: logits are divided by it (default 1)")
    p.add_argument("--top-k", type=_at_least(1), help="sampling: draw from the k likeliest tokens (default: all)")
    p.add_argument("--top-p", type=_number(float, lambda v: 0 < v <= 1, "a number in (0, 1]"),
                   help="sampling: then from the smallest set of mass >= p (default 1: all)")
    p.add_argument("--seed", type=_number(int, lambda v: 0 <= v < 2 ** 32, "an integer in [0, 2**32)"),
                   help="sampling: fixes the draws whatever --batch-size or input order (default 0)")
    p.add_argument("--num-return-sequences", type=_at_least(1), metavar="N",
                   help="sampling: N outputs per input, printed as N lines in a row (input 1's N, then input 2's...)")
    p.add_argument("--draw", metavar="OUT_DIR", help="also draw each input's region boxes and output on "
                   "its picture, one PNG per input (bertgen_jax/draw.py); needs --image-dir")
    p.add_argument("--image-dir", metavar="DIR", help="your pictures for --draw: DIR/<image id>[.jpg|.jpeg|.png]")
    args = p.parse_args(argv)
    args.sampling = _sampling(p, args)  # decode.generate's keywords, checked before the model loads
    try:
        return _generate(p, args)
    except (OSError, KeyError, ValueError, CheckpointError) as err:
        if debug_requested():
            raise
        print(f"error: {err.args[0] if isinstance(err, KeyError) else err}", file=sys.stderr)
        return 1


def _at_least(least: int):
    """An argparse type: an integer >= least. A bad value is argparse's one `error:` line naming
    the flag (exit code 2), before any model is loaded."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            value = None
        if value is None or value < least:
            raise argparse.ArgumentTypeError(f"expected an integer >= {least}, got {text!r}")
        return value
    return parse


def _number(kind, ok, want: str):
    """An argparse type: a `kind` value for which ok(value) holds, else argparse's error line."""
    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            value = None
        if value is None or not ok(value):
            raise argparse.ArgumentTypeError(f"expected {want}, got {text!r}")
        return value
    return parse


def _sampling(p, args) -> dict:
    """The sampling options given, as decode.generate's keywords; an option that greedy or beam
    search would ignore is argparse's error (exit 2) before the model loads."""
    names = ("temperature", "top_k", "top_p", "seed", "num_return_sequences")
    given = {k: getattr(args, k) for k in names if getattr(args, k) is not None}
    if given and not args.do_sample:
        p.error(f"--{next(iter(given)).replace('_', '-')} needs --do-sample")
    if args.do_sample and args.beam > 1:
        p.error("--do-sample draws one token at a time: it needs --beam 1")
    return dict(given, do_sample=True) if args.do_sample else {}


def _lines(path: str | None, what: str) -> list[str]:
    """The lines of a file (stdin for None), one item each; a blank one is an error naming it."""
    with (open(path, encoding="utf-8") if path else sys.stdin) as f:
        lines = [line.strip() for line in f]
    for n, line in enumerate(lines, start=1):
        if not line:
            raise ValueError(f"{path or 'stdin'} line {n}: empty {what} (one {what} per line, no blank lines)")
    if not lines:  # most likely the wrong file or a missing redirect: exit 1, write nothing
        raise ValueError(f"{path or 'stdin'}: no {what} to read (one {what} per line)")
    return lines


def _generate(p, args) -> int:
    # Flags and inputs are checked before the (slow) model load.
    if not args.export and (not args.task or not args.lang):
        p.error("--task and --lang are needed (or --export DIR)")
    images = args.images
    if args.images_file and not args.export:
        images = _lines(args.images_file, "image id")
    sources = _lines(args.input, "source sentence") if args.task == "translate" and not args.export else None
    if bool(args.draw) != bool(args.image_dir) or (args.draw and args.task == "translate" and images is None):
        p.error("--draw OUT_DIR and --image-dir DIR go together, with images: --task caption, or "
                "--images/--images-file for multimodal translation")
    gen = Generator.load(args.model, args.step, args.features)
    if args.export:
        gen.export(args.export)
        print(f"exported to {args.export}", file=sys.stderr)
        return 0
    pictures = None
    if args.draw and gen.store is not None:  # every picture found and read before anything is written
        from bertgen_jax import draw  # noqa: PLC0415
        pictures = draw.check_pictures(args.image_dir, images or gen.store.ids)
    if args.task == "caption":
        if gen.store is None:
            p.error("--task caption needs --features STORE")
        out = gen.caption(images or gen.store.ids, args.lang, beam=args.beam, max_len=args.max_len or 150,
                          batch_size=args.batch_size, **args.sampling)
    else:
        out = gen.translate(sources, args.lang, images, beam=args.beam, max_len=args.max_len,
                            batch_size=args.batch_size, budget=args.budget, **args.sampling)
    # num_return_sequences N > 1: `out` holds N outputs per input, written as N lines in a row.
    text = "".join(line + "\n" for per in out for line in (per if isinstance(per, list) else [per]))
    if args.output:
        with open(args.output, "w", encoding="utf-8") as f:
            f.write(text)
    else:
        sys.stdout.write(text)
    if pictures:
        draw.draw_all(args.draw, pictures, gen.store, out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
