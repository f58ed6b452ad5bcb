"""Every config key, with its default and one line on what it does. Task configs start from
`get_config()` here and override; `--config.KEY=VALUE` on the command line overrides again."""

import ml_collections


def get_config() -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.seed = 0  # the one root seed: init, data order, box flips, dropout (folded by step)
    c.required_files = ()  # (path or tuple of alternative paths, where to get it), checked before anything starts
    # "unrolled": the original's objective, one [MASK] prediction per example, n+1 examples per
    # target; "one_pass": all n+1 predictions of a pair in one segment (docs/one_pass.md) and a
    # cached decoder. Same parameters; a workdir keeps its objective.
    c.objective = "unrolled"

    c.data = d = ml_collections.ConfigDict()
    d.manifest = ""  # manifest JSON of task streams (docs/data_formats.md); "" = ToyWorld in the workdir
    d.toyworld_scale = "demo"  # ToyWorld size generated when manifest is "": "tiny" or "demo"
    d.toyworld_seed = 0  # ToyWorld corpus seed
    d.vocab = ""  # WordPiece vocab.txt; "" = the manifest's `vocab`
    d.features_dir = ""  # a prepared feature store, used as it is; "" = <manifest dir>/features, built from the annotations' zips
    d.train_streams = ()  # train stream names to use; () = every train stream of the manifest
    d.stream_weights = {}  # stream name -> sampling weight (default 1: equal shares, as the original)
    d.mode = "packed"  # "packed" (several examples per row) or "faithful" (one per row, as the original)
    d.row_length = 128  # tokens per row
    d.targets_per_row = 8  # [MASK] slots per row (packed mode; objective one_pass uses one_pass.targets_per_row)
    d.window = 32  # pairs open at once; a batch interleaves their prefixes (1: a pair's prefixes travel together)
    d.regions_per_row = 48  # image-region slots per row
    d.budgets = {"ic": 64, "mmt": 64, "mt": 511}  # sequence budget per task (text + boxes); the original's MT 512 puts [END] past 512 positions
    d.on_bad_record = "skip"  # "skip" (count and log) or "error" (stop at the first bad record)
    d.prefetch = 2  # host batches built ahead in a background thread (0: none)

    # Row shape with objective "one_pass", used instead of data.row_length, data.targets_per_row,
    # data.regions_per_row and batch.rows_per_device: a segment is n - 1 tokens longer than the
    # pair's longest unrolled example and holds all its n+1 targets.
    c.one_pass = o = ml_collections.ConfigDict()
    o.row_length = 256  # tokens per row
    o.targets_per_row = 96  # query slots per row (a pair takes n+1)
    o.regions_per_row = 96  # image-region slots per row
    o.rows_per_device = 8  # rows per data-parallel device per micro-batch

    c.batch = b = ml_collections.ConfigDict()
    b.rows_per_device = 8  # rows per data-parallel device (data x fsdp) per micro-batch
    b.accum_steps = 1  # micro-batches per optimizer step (gradient accumulation)

    c.model = m = ml_collections.ConfigDict()
    m.init = "random"  # random | bert | visual | hybrid | bertgen (bertgen_jax/weights.py)
    m.bert_path = ""  # Hugging Face (m)BERT directory, for init bert / hybrid
    m.vlbert_path = ""  # VL-BERT .model checkpoint, for init visual / hybrid
    m.bertgen_path = ""  # BERTGEN checkpoint, for init bertgen
    m.vocab_size = 0  # 0 = the tokenizer's vocabulary size (ignored when loading a checkpoint)
    m.hidden_size = 768  # model width
    m.num_layers = 12  # encoder layers
    m.num_heads = 12  # attention heads
    m.intermediate_size = 3072  # feed-forward width
    m.max_positions = 512  # position table rows
    m.dropout = 0.1  # hidden and embedding dropout
    m.attention_dropout = 0.1  # attention-probability dropout
    m.feature_dim = 0  # RoI feature size; 0 = the feature store's
    m.visual_ln_init = 0.0  # gammas of the visual LayerNorms in a fresh model (0: vision off, as the original)
    m.dtype = "float32"  # compute dtype: "float32" or "bfloat16" (parameters stay float32)
    m.remat = False  # recompute each layer in the backward pass (less memory, more compute)

    c.optim = o = ml_collections.ConfigDict()
    o.lr_rule = "absolute"  # "absolute": lr; "scaled": base_lr x rows per optimizer step (the original's rule)
    o.lr = 1.3e-5  # peak learning rate for lr_rule "absolute" (the paper's)
    o.base_lr = 1e-7  # per-row learning rate for lr_rule "scaled"
    o.warmup_steps = 16000  # linear warm-up from 0 (the paper's 16k)
    o.weight_decay = 1e-4  # AdamW decoupled weight decay
    o.decay_norms_and_biases = True  # False: no weight decay on biases and LayerNorm scales
    o.b1 = 0.9  # Adam beta1
    o.b2 = 0.999  # Adam beta2
    o.eps = 1e-6  # Adam epsilon
    o.clip_norm = 10.0  # global gradient-norm clip (0: none)
    o.fused = True  # clip + AdamW in one pass per parameter (False: optax.chain(clip_by_global_norm, adamw))

    c.mesh = ml_collections.ConfigDict()
    c.mesh.data = -1  # data-parallel ways (-1: the devices fsdp x tensor leave)
    c.mesh.fsdp = 1  # data-parallel ways with parameters sharded along `embed`
    c.mesh.tensor = 1  # tensor-parallel ways (heads, MLP, vocabulary)
    c.mesh.rules = ()  # logical axis rule overrides as (name, mesh axis) pairs; () = sharding.LOGICAL_AXIS_RULES

    c.train = t = ml_collections.ConfigDict()
    t.steps = 100000  # optimizer steps in all
    t.log_every = 50  # steps between console / TensorBoard reports (and NaN checks)
    t.checkpoint_every = 1000  # steps between checkpoints
    t.keep_checkpoints = 3  # newest checkpoints kept
    t.async_checkpoints = True  # write checkpoints in the background
    t.eval_every = 5000  # steps between evaluations on the val split (0: only at the end)

    c.eval = e = ml_collections.ConfigDict()
    e.batches = 4  # teacher-forced val batches per evaluation
    e.decode = True  # also decode held-out sets and score them (BLEU, METEOR, CIDEr, ROUGE-L)
    e.decode_split = "test"  # split decoded at the end of training
    e.max_len = {"ic": 150, "mmt": 150, "mt": 300}  # decode length limit per task (the original's)
    e.decode_batch = 32  # sentences decoded together
    e.max_sentences = 0  # decode at most this many inputs (IC: images) per held-out set; 0 = all
    e.beam = 1  # 1: greedy (as the original); > 1: beam search width
    e.compare_beam = 0  # > 0: also decode every set with this width, rows "<set> (beam K)" (K=1: "(greedy)") beside
    e.shuffle_images = True  # also score visual sets with images shuffled across the set
    e.samples = 4  # decoded examples per set written to TensorBoard as text
    return c
