"""ToyWorld: the embedded corpus generator. It writes a small synthetic multilingual,
multimodal corpus in the original's file formats (docs/toyworld.md); `bertgen_jax.data` reads it
like any real corpus. `python -m bertgen_jax.toyworld --out DIR --scale demo` writes one."""

from bertgen_jax.toyworld.corpus import (FEATURE_DIM, SCALES, SPLITS, build_corpus, fields,
                                         generate, image_detections, image_name, main, write_corpus)

__all__ = ["FEATURE_DIM", "SCALES", "SPLITS", "build_corpus", "fields", "generate",
           "image_detections", "image_name", "main", "write_corpus"]
