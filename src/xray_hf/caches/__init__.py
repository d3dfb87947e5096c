"""Embedding caches of frozen towers: the LLM2CLIP text tower's pooled outputs (`text`) and a distillation teacher's
image embeddings (`teacher`). Both are keyed on a fingerprint of what they were built from and share their hashing
and `load_or_build` (`common`)."""
