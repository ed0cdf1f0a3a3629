"""Report generation models and decoding: the base encoder-decoder Transformer and XProNet.

`config` holds every hyperparameter, `visual` turns views into visual tokens, `layers` has the
Transformer blocks, `xpronet` the cross-modal prototype network, `models` assembles them and
`decoding` turns a model into reports (greedy and batched beam search).
"""
