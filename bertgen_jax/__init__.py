"""bertgen_jax: BERTGEN (one BERT encoder + MLM head generating text for IC, MMT and MT) in JAX/Flax."""
