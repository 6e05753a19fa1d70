"""FRACTAL (Makhija et al. 2024): sentence-level scores learned from response-level judge labels.

A judge rates whole answers; FRACTAL learns which sentences carry that rating. `split` cuts a response into
sentences, `embed` turns sentences and their context into vectors, `scorer` trains an MLP whose aggregated
sentence scores (`aggregate`) reproduce the judge's labels, `bags` builds the training data from judgment files,
`pairs` turns low-scored sentences into DPO preference pairs, `auc` measures sentence-level agreement with a truth.
Heavy libraries (torch, transformers) are imported inside the functions that need them.
"""
