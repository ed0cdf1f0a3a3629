"""Every hyperparameter of a report generator in one dataclass.

A checkpoint stores `to_dict()` and rebuilds the model from `from_dict()`, so nothing about the
architecture has to be remembered elsewhere. `rrg-stage train` turns each field with a default
into a command-line option.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

MODELS = ("base", "xpronet", "ekagen", "warmstart")
# models whose reports are conditioned on labels (predicted by the diagnosis classifier at test time)
LABEL_CONDITIONED = ("xpronet", "ekagen")
# fields recorded only for the model that uses them (added after the other models' records existed), so
# those records, and the up-to-date checks that compare them, do not change
MODEL_FIELDS = {"warmstart": ("decoder", "decoder_config", "bos_id", "eos_id"), "xpronet": ("center_prototypes",)}
# what a record written before a field existed was trained with
BEFORE_FIELD = {"center_prototypes": False}


@dataclass
class GeneratorConfig:
    """Defaults are the reference settings (R2Gen / XProNet on IU X-Ray), except center_prototypes
    (ours, see stages.generation.xpronet).

    `num_classes * protos_per_class` prototypes of `proto_dim` features: 14 CheXpert groups of
    N=20 (XProNet), each the concatenation of a unit visual (1280) and unit text (384) feature.
    Top-k=15 prototypes answer each query. Loss = CE + img_con_weight * L_img + txt_con_weight *
    L_txt (1.0 and 0.1); pairs of samples sharing a label aim at similarity
    con_base ** -(hamming / num_classes) (1.5), the others are pushed below con_margin (0.4).
    EKAGen's knowledge base holds knowledge_per_class retrieved report embeddings (m, 8) of
    knowledge_dim features (384, MiniLM) per observation; both come from knowledge.pkl.
    """

    vocab_size: int
    model: str = "base"
    max_length: int = 60
    d_model: int = 512
    heads: int = 8
    layers: int = 3
    d_ff: int = 512
    dropout: float = 0.1
    visual_dim: int = 1280
    max_views: int = 2
    num_classes: int = 14
    protos_per_class: int = 20
    proto_dim: int = 1664
    topk: int = 15
    img_con_weight: float = 1.0
    txt_con_weight: float = 0.1
    con_margin: float = 0.4
    con_base: float = 1.5
    center_prototypes: bool = True
    knowledge_per_class: int = 8
    knowledge_dim: int = 384
    decoder: str = "minilm"
    decoder_config: dict[str, Any] = field(default_factory=dict)
    bos_id: int = 0
    eos_id: int = 0

    def validate(self) -> None:
        """ValueError naming the first setting that cannot build a model."""
        if self.model not in MODELS:
            raise ValueError(f"unknown generator model {self.model!r}; choose from {', '.join(MODELS)}")
        if self.model == "warmstart" and not self.decoder_config:
            raise ValueError("a warmstart generator needs its decoder's config (decoder_config)")
        if self.model != "warmstart" and self.d_model % self.heads:
            raise ValueError(f"d_model {self.d_model} is not divisible by heads {self.heads}")
        positive = ("vocab_size", "max_length", "d_model", "heads", "layers", "d_ff", "visual_dim", "max_views",
                    "num_classes", "protos_per_class", "proto_dim", "topk", "knowledge_per_class", "knowledge_dim")
        for name in positive:
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.max_length < 2:
            raise ValueError(f"max_length must leave room for BOS and one token, got {self.max_length}")
        if self.con_base <= 1:
            raise ValueError(f"con_base must be > 1 (the similarity target decays with label distance), "
                             f"got {self.con_base}")

    def to_dict(self) -> dict[str, Any]:
        values = dataclasses.asdict(self)
        for model, names in MODEL_FIELDS.items():
            if self.model != model:
                for name in names:
                    del values[name]
        return values

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> "GeneratorConfig":
        """Rebuild from `to_dict()`; unknown keys are an error rather than silently dropped, and a
        field the record predates takes the value it was trained with (BEFORE_FIELD)."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"unknown generator settings {unknown}; was the checkpoint written by a newer version?")
        recorded = MODEL_FIELDS.get(values.get("model", "base"), ())
        return cls(**{**{name: BEFORE_FIELD[name] for name in recorded if name in BEFORE_FIELD}, **values})
