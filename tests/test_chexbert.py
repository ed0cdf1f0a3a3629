"""CheXbert loading and inference, on tiny randomly initialised checkpoints in the official layout.

The real chexbert.pth is not available offline, so these tests check what can be checked without
it: the file format is read as the official one is written (a dict with "model_state_dict" saved
from nn.DataParallel), the output classes are mapped correctly, inference does not depend on
batching, and broken files fail with messages that say what is wrong.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from stages.labeling.chexbert import CheXbertLabeler, write_random_checkpoint
from stages.labeling.observations import BLANK, NO_FINDING, POSITIVE, UNCERTAIN

HIDDEN, LAYERS, INTERMEDIATE, VOCAB, POSITIONS = 64, 2, 128, 30522, 512

REPORTS = [
    "The heart is normal in size. The lungs are clear.",
    "",
    "Mild cardiomegaly. Small left pleural effusion. No pneumothorax.",
    "XXXX sternotomy XXXX. The XXXX are intact.",
    "Right lower lobe opacity concerning for pneumonia. " * 80,  # far beyond 512 word pieces
    "Stable   cardiomediastinal\nsilhouette.",
    "No acute cardiopulmonary abnormality.",
]


def official_state(seed: int = 0, head_std: float = 1.0) -> dict[str, torch.Tensor]:
    """Every key of the official file, written out by name (independent of the loader's model).

    Heads get a large spread so that argmax margins dwarf float rounding differences.
    """
    g = torch.Generator().manual_seed(seed)

    def rand(*shape: int, std: float = 0.02) -> torch.Tensor:
        return torch.randn(*shape, generator=g) * std

    state = {}
    emb = "module.bert.embeddings."
    state[emb + "word_embeddings.weight"] = rand(VOCAB, HIDDEN)
    state[emb + "position_embeddings.weight"] = rand(POSITIONS, HIDDEN)
    state[emb + "token_type_embeddings.weight"] = rand(2, HIDDEN)
    state[emb + "LayerNorm.weight"] = torch.ones(HIDDEN)
    state[emb + "LayerNorm.bias"] = torch.zeros(HIDDEN)
    for i in range(LAYERS):
        layer = f"module.bert.encoder.layer.{i}."
        for name in ("attention.self.query", "attention.self.key", "attention.self.value",
                     "attention.output.dense"):
            state[layer + name + ".weight"] = rand(HIDDEN, HIDDEN)
            state[layer + name + ".bias"] = rand(HIDDEN)
        state[layer + "intermediate.dense.weight"] = rand(INTERMEDIATE, HIDDEN)
        state[layer + "intermediate.dense.bias"] = rand(INTERMEDIATE)
        state[layer + "output.dense.weight"] = rand(HIDDEN, INTERMEDIATE)
        state[layer + "output.dense.bias"] = rand(HIDDEN)
        for norm in ("attention.output.LayerNorm", "output.LayerNorm"):
            state[layer + norm + ".weight"] = torch.ones(HIDDEN)
            state[layer + norm + ".bias"] = torch.zeros(HIDDEN)
    state["module.bert.pooler.dense.weight"] = rand(HIDDEN, HIDDEN)
    state["module.bert.pooler.dense.bias"] = rand(HIDDEN)
    for head in range(14):
        outputs = 4 if head < 13 else 2
        state[f"module.linear_heads.{head}.weight"] = rand(outputs, HIDDEN, std=head_std)
        state[f"module.linear_heads.{head}.bias"] = rand(outputs, std=head_std)
    return state


def save(path: Path, state: dict[str, torch.Tensor]) -> Path:
    torch.save({"epoch": 3, "model_state_dict": state, "optimizer_state_dict": {}}, path)
    return path


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save(tmp_path_factory.mktemp("chexbert") / "chexbert.pth", official_state())


@pytest.fixture(scope="module")
def labeler(checkpoint: Path) -> CheXbertLabeler:
    return CheXbertLabeler.from_checkpoint(checkpoint)


def test_loads_official_layout_and_reads_sizes(labeler: CheXbertLabeler) -> None:
    config = labeler.model.bert.config
    assert (config.hidden_size, config.num_hidden_layers) == (HIDDEN, LAYERS)
    assert (config.intermediate_size, config.vocab_size, config.num_attention_heads) == (
        INTERMEDIATE, VOCAB, 1)


def test_output_shape_dtype_and_ranges(labeler: CheXbertLabeler) -> None:
    labels = labeler.label(REPORTS, progress=False)
    assert labels.shape == (len(REPORTS), 14) and labels.dtype == np.int8
    assert set(np.unique(labels[:, :NO_FINDING])) <= {0, 1, 2, 3}
    assert set(np.unique(labels[:, NO_FINDING])) <= {BLANK, POSITIVE}
    assert labeler.label([], progress=False).shape == (0, 14)


def test_independent_of_batch_size_and_order(labeler: CheXbertLabeler) -> None:
    reference = labeler.label(REPORTS, batch_size=32, progress=False)
    for batch_size in (1, 2, 3):
        assert np.array_equal(labeler.label(REPORTS, batch_size=batch_size, progress=False), reference)
    permutation = np.random.default_rng(0).permutation(len(REPORTS))
    shuffled = labeler.label([REPORTS[i] for i in permutation], batch_size=2, progress=False)
    assert np.array_equal(shuffled, reference[permutation])


def test_whitespace_and_truncation_follow_chexbert(labeler: CheXbertLabeler) -> None:
    # CheXbert collapses whitespace and keeps the first 510 word pieces of a long report.
    same = labeler.label(["Stable cardiomediastinal silhouette.", REPORTS[5]], progress=False)
    assert np.array_equal(same[0], same[1])
    long = "Right lower lobe opacity concerning for pneumonia. "
    assert np.array_equal(labeler.label([long * 80], progress=False), labeler.label([long * 200], progress=False))


def test_head_outputs_map_to_raw_classes(tmp_path: Path) -> None:
    # Zero weights and one-hot biases pin each head's argmax: head class k must come out as k,
    # and No Finding's class 1 as POSITIVE.
    state = official_state()
    for head in range(14):
        state[f"module.linear_heads.{head}.weight"].zero_()
        bias = state[f"module.linear_heads.{head}.bias"]
        bias.zero_()
        bias[1 if head == 13 else head % 4] = 5.0
    labels = CheXbertLabeler.from_checkpoint(save(tmp_path / "c.pth", state)).label(
        REPORTS[:2], progress=False)
    expected = [head % 4 for head in range(13)] + [POSITIVE]
    assert labels.tolist() == [expected, expected]
    assert expected[3] == UNCERTAIN


def test_unprefixed_state_dict_and_position_ids_are_accepted(tmp_path: Path, labeler) -> None:
    state = {k.removeprefix("module."): v for k, v in official_state().items()}
    state["bert.embeddings.position_ids"] = torch.arange(POSITIONS)[None]
    other = CheXbertLabeler.from_checkpoint(save(tmp_path / "plain.pth", state))
    assert np.array_equal(other.label(REPORTS, progress=False), labeler.label(REPORTS, progress=False))


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=r"nope\.pth.*chexbert\.pth"):
        CheXbertLabeler.from_checkpoint(tmp_path / "nope.pth")


def test_truncated_file(tmp_path: Path, checkpoint: Path) -> None:
    broken = tmp_path / "truncated.pth"
    broken.write_bytes(checkpoint.read_bytes()[: checkpoint.stat().st_size // 2])
    with pytest.raises(ValueError, match=r"truncated\.pth.*not a readable torch checkpoint.*chexbert\.pth"):
        CheXbertLabeler.from_checkpoint(broken)


def test_not_a_checkpoint(tmp_path: Path) -> None:
    text = tmp_path / "notes.pth"
    text.write_text("these are not weights")
    with pytest.raises(ValueError, match="not a readable torch checkpoint"):
        CheXbertLabeler.from_checkpoint(text)
    torch.save({"state_dict": official_state()}, tmp_path / "other.pth")
    with pytest.raises(ValueError, match="no 'model_state_dict'"):
        CheXbertLabeler.from_checkpoint(tmp_path / "other.pth")


def test_missing_head(tmp_path: Path) -> None:
    state = official_state()
    del state["module.linear_heads.13.weight"], state["module.linear_heads.13.bias"]
    with pytest.raises(ValueError, match=r"missing keys: linear_heads\.13\.bias, linear_heads\.13\.weight"):
        CheXbertLabeler.from_checkpoint(save(tmp_path / "c.pth", state))


def test_wrong_prefix(tmp_path: Path) -> None:
    state = {"model." + k.removeprefix("module."): v for k, v in official_state().items()}
    with pytest.raises(ValueError) as err:
        CheXbertLabeler.from_checkpoint(save(tmp_path / "c.pth", state))
    message = str(err.value)
    assert "c.pth" in message and "the official CheXbert checkpoint chexbert.pth" in message
    assert "unexpected keys: model." in message and "more)" in message


def test_wrong_head_shape(tmp_path: Path) -> None:
    state = official_state()
    state["module.linear_heads.13.weight"] = torch.zeros(4, HIDDEN)
    state["module.linear_heads.13.bias"] = torch.zeros(4)
    with pytest.raises(ValueError, match=r"wrong shapes: linear_heads\.13\.bias \(4,\) \(want \(2,\)\)"):
        CheXbertLabeler.from_checkpoint(save(tmp_path / "c.pth", state))


def test_random_checkpoint_helper_round_trips(tmp_path: Path) -> None:
    path = write_random_checkpoint(tmp_path / "r.pth", hidden_size=64, num_layers=1, intermediate_size=64)
    labels = CheXbertLabeler.from_checkpoint(path).label(REPORTS[:3], progress=False)
    assert labels.shape == (3, 14)
