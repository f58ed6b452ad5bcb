from bertgen_jax.toyworld.corpus import main

main()
