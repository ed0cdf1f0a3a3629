"""PRIOR-style image-report pretraining of an image encoder.

data     image-report pairs from dataset.h5: a study's views and its report's sentences
losses   global InfoNCE, local alignment, the sentence prototype bank's Gumbel-softmax assignment
         and its temperature schedule, the matched (non-autoregressive) sentence reconstruction
model    the joint model: image encoder + heads, MiniLM sentence encoder, prototype bank,
         the two conditional reconstruction decoders; its checkpoint and the exported encoder
loop     the resumable training loop (last.pt, log.jsonl, curves.png, validation selection)
probe    downstream scores: zero-shot classification, linear probe, image-to-report retrieval
"""
