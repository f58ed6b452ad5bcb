"""The paper's setup (docs/specification.md): 13 task streams, base model with hybrid mBERT + VL-BERT
initialisation, AdamW lr 1.3e-5 with 16k warm-up steps. Used as `configs/multitask.py:paper`.

Files live under $BERTGEN_DATA (default ~/bertgen_data); `train.run` checks `required_files`
before anything else and lists every missing one with where to get it.
"""

import os

DATA = os.environ.get("BERTGEN_DATA", os.path.expanduser("~/bertgen_data"))
MBERT = os.path.join(DATA, "bert-base-multilingual-cased")
VLBERT = os.path.join(DATA, "vl-bert", "vl-bert_base_res101_pretrain_multitask.model")
MANIFEST = os.path.join(DATA, "manifest.json")
VOCAB = os.path.join(DATA, "vocab_bertgen.txt")

REQUIRED = (
    (os.path.join(MBERT, "config.json"), "Hugging Face hub: google-bert/bert-base-multilingual-cased "
     "(`huggingface-cli download google-bert/bert-base-multilingual-cased --local-dir "
     f"{MBERT}`)"),
    (os.path.join(MBERT, "vocab.txt"), "same download as config.json"),
    ((os.path.join(MBERT, "model.safetensors"), os.path.join(MBERT, "pytorch_model.bin")),
     "same download as config.json (either weights file will do)"),
    (VLBERT, "VL-BERT's pre-trained base model (github.com/jackroos/VL-BERT, 'Pre-trained Models': "
     "vl-bert_base_res101_pretrain_multitask.model)"),
    (VOCAB, "python -c \"from bertgen_jax import vocab; vocab.write_vocab_with_tags("
     f"'{MBERT}/vocab.txt', '{VOCAB}')\""),
    (MANIFEST, "a manifest of the 13 task streams (Multi30k MMT EN<->DE, EN<->FR; IWSLT'14 EN<->DE, "
     "EN<->FR; SETIMES EN<->TR; Flickr30k EN, DE and Flickr8k TASVIRET TR captions) with their "
     "annotation and feature files: see docs/data_formats.md"),
)


def configure(c):
    c.required_files = REQUIRED
    c.data.manifest = MANIFEST
    c.data.vocab = VOCAB
    c.data.budgets = {"ic": 64, "mmt": 64, "mt": 511}  # 512 would put an MT [END] past the position table
    c.data.row_length = 512  # packed rows: one 512-token MT example or several visual ones
    c.data.targets_per_row = 32
    c.data.regions_per_row = 160
    c.model.update(init="hybrid", bert_path=MBERT, vlbert_path=VLBERT)  # base size: base.py defaults
    c.optim.update(lr_rule="absolute", lr=1.3e-5, warmup_steps=16000, clip_norm=10.0)
    # docs/specification.md gives no total step count; set train.steps to your budget.
    c.train.update(steps=500000, log_every=100, checkpoint_every=5000, eval_every=20000)
    c.eval.max_len = {"ic": 150, "mmt": 150, "mt": 300}
    return c
