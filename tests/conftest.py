"""Shared fixtures: tiny reference models written to disk in the formats we read."""

import os

import numpy as np
import pytest

# Tests run on the CPU; a mesh test asks for fake devices itself.
os.environ.setdefault("JAX_PLATFORMS", "cpu")

def tiny_config(manifest, **overrides):
    """configs/multitask.py:tiny on the ToyWorld manifest at `manifest`, with flattened overrides."""
    from configs import multitask
    config = multitask.get_config("tiny")
    config.data.manifest = str(manifest)
    config.update_from_flattened_dict(overrides)
    return config


TINY_HF = dict(vocab_size=120, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
               intermediate_size=37, max_position_embeddings=64, type_vocab_size=2)


def perturb_(torch_model, seed=0, scale=0.05):
    """Give every parameter (LayerNorm gammas and biases included) non-trivial values, so a
    parity test cannot pass by loading a default by accident."""
    import torch
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in torch_model.parameters():
            p.add_(scale * torch.randn(p.shape, generator=gen))


@pytest.fixture(scope="session")
def tiny_hf_dir(tmp_path_factory):
    """A tiny random `BertForMaskedLM` saved with save_pretrained (safetensors)."""
    import torch
    from transformers import BertConfig, BertForMaskedLM
    torch.manual_seed(0)
    model = BertForMaskedLM(BertConfig(**TINY_HF)).eval()
    perturb_(model)
    path = tmp_path_factory.mktemp("tiny_hf")
    model.save_pretrained(path)
    return str(path)


def padded_ids(rng, vocab, lengths, width):
    """[B, width] random ids (>= 104, clear of special tokens) and the 0/1 mask of `lengths`."""
    ids = rng.integers(104, vocab, size=(len(lengths), width))
    mask = (np.arange(width)[None] < np.asarray(lengths)[:, None]).astype(np.int64)
    return ids * mask, mask
