"""Curation (paper section 2): steps that turn raw image-caption data into training data, each a streaming
`datasets` step, and `xray-hf curate`, which runs them in order. One idea per module:

- `cleaning`: caption cleaning, the language filter, sentence splitting, unigram counts.
- `concepts`: WordNet concepts, MetaCLIP balancing, hashtag canonicalisation and long-tail resampling.
- `similarity_filter`: image-text scores from a CLIP checkpoint (it stands above `eval`, whose features it uses).
- `rewrite`: caption rewriting with a local causal LM.
- `run`: the configured steps over one source into Parquet shards with a report (`curate`).
"""
