"""The generation library on tiny models: masking, causality, the KV cache, XProNet's prototype
selection, top-k attention and contrastive loss, and greedy / beam decoding."""

from __future__ import annotations

import collections
import math

import numpy as np
import pytest
import torch
from torch import nn

from stages.generation.config import GeneratorConfig
from stages.generation.decoding import (beam_search, block_repeated_trigrams, consensus, greedy, mbr, sample,
                                       sentence_bleu)
from stages.generation.layers import sinusoid
from stages.generation.models import ReportGenerator, build_generator
from stages.generation.visual import VisualExtractor, cached_tokens
from stages.generation.xpronet import TopKAttention, multilabel_contrastive
from stages.models.image_encoders import ImageEncoder

VOCAB, PATCHES, CHANNELS, GROUPS, PER_GROUP, PROTO_DIM = 20, 4, 16, 14, 4, 24


pytestmark = pytest.mark.usefixtures("one_thread")


def tiny(model: str = "xpronet", seed: int = 0, **overrides) -> ReportGenerator:
    torch.manual_seed(seed)
    settings = dict(vocab_size=VOCAB, model=model, max_length=12, d_model=32, heads=4, layers=2, d_ff=64,
                    dropout=0.1, visual_dim=CHANNELS, max_views=2, num_classes=GROUPS, protos_per_class=PER_GROUP,
                    proto_dim=PROTO_DIM, topk=3)
    settings.update(overrides)
    prototypes = np.random.default_rng(seed).normal(size=(GROUPS, PER_GROUP, PROTO_DIM)) if model == "xpronet" else None
    return build_generator(GeneratorConfig(**settings), prototypes)


def batch(seed: int = 0, size: int = 3) -> dict[str, torch.Tensor]:
    """Study 1 lacks its second view; reports of 6, 4 and 8 words padded to T=11; labels per study."""
    g = torch.Generator().manual_seed(seed)
    visual = torch.randn(size, 2 * PATCHES, CHANNELS, generator=g)
    mask = torch.ones(size, 2 * PATCHES, dtype=torch.bool)
    mask[1:2, PATCHES:] = False
    targets = torch.zeros(size, 11, dtype=torch.long)
    target_mask = torch.zeros(size, 11, dtype=torch.bool)
    for row, words in enumerate([6, 4, 8][:size]):
        targets[row, 1:1 + words] = torch.randint(1, VOCAB, (words,), generator=g)
        target_mask[row, :words + 2] = True
    labels = torch.zeros(size, GROUPS)
    labels[0, [1, 4]] = 1
    labels[1:2, 2] = 1
    labels[2:, 1] = 1
    return {"visual": visual, "visual_mask": mask, "targets": targets, "target_mask": target_mask, "labels": labels}


def test_config_round_trip_and_validation():
    config = GeneratorConfig(vocab_size=50, model="xpronet", d_model=64)
    assert GeneratorConfig.from_dict(config.to_dict()) == config
    assert (config.max_length, config.heads, config.layers, config.topk, config.con_margin) == (60, 8, 3, 15, 0.4)
    with pytest.raises(ValueError, match="unknown generator settings"):
        GeneratorConfig.from_dict({**config.to_dict(), "colour": 1})
    with pytest.raises(ValueError, match="unknown generator model"):
        build_generator(GeneratorConfig(vocab_size=50, model="r2gen"))
    with pytest.raises(ValueError, match="divisible"):
        build_generator(GeneratorConfig(vocab_size=50, d_model=30, heads=8))


@pytest.mark.parametrize("model", ["base", "xpronet"])
def test_shapes_and_padding_do_not_change_logits(model):
    generator = tiny(model).eval()
    inputs = batch()
    out = generator(**inputs)
    assert out.logits.shape == (3, 10, VOCAB)
    assert set(out.terms) == ({"ce"} if model == "base" else {"ce", "img_con", "txt_con"})
    assert torch.isfinite(out.loss)

    changed = {k: v.clone() for k, v in inputs.items()}
    changed["visual"][1, PATCHES:] = 1e3 * torch.randn(PATCHES, CHANNELS)  # the missing view of study 1
    changed["targets"][~changed["target_mask"]] = torch.randint(1, VOCAB, (int((~inputs["target_mask"]).sum()),))
    again = generator(**changed)
    real = inputs["target_mask"][:, 1:]
    torch.testing.assert_close(again.logits[real], out.logits[real], rtol=0, atol=1e-5)
    torch.testing.assert_close(again.loss, out.loss, rtol=0, atol=1e-5)

    with torch.no_grad():  # what marks a token as the second view never reaches study 1, which lacks it
        generator.visual.views.weight[1] += torch.randn(32)  # (not a constant: LayerNorm would remove it)
    moved = generator(**changed).logits
    torch.testing.assert_close(moved[1][real[1]], out.logits[1][real[1]], rtol=0, atol=1e-5)
    assert not torch.allclose(moved[0], out.logits[0], atol=1e-4)

    changed["visual"][1, :PATCHES] += 1.0  # a real view does matter
    assert not torch.allclose(generator(**changed).logits[1], out.logits[1], atol=1e-4)


def test_visual_tokens_mark_patch_position_and_view():
    generator = tiny("base").eval()
    tokens = generator.visual
    out = tokens(torch.zeros(1, 2 * PATCHES, CHANNELS))[0]
    index = torch.arange(2 * PATCHES)
    expected = tokens.project.bias + sinusoid(index % PATCHES, 32) + tokens.views.weight[index // PATCHES]
    torch.testing.assert_close(out, expected)
    with pytest.raises(ValueError, match="visual_dim"):
        tokens(torch.zeros(1, 2 * PATCHES, CHANNELS + 1))
    with pytest.raises(ValueError, match="max_views"):
        tokens(torch.zeros(1, 2 * PATCHES + 1, CHANNELS))


def test_decoder_is_causal():
    generator = tiny().eval()
    inputs = batch()
    out = generator(**inputs)
    later = {k: v.clone() for k, v in inputs.items()}
    later["targets"][:, 4:] = (later["targets"][:, 4:] + 3) % VOCAB
    changed = generator(**later).logits
    torch.testing.assert_close(changed[:, :4], out.logits[:, :4], rtol=0, atol=1e-5)
    assert not torch.allclose(changed[:, 4:], out.logits[:, 4:], atol=1e-4)


def test_incremental_steps_match_the_full_forward():
    generator = tiny().eval()
    inputs = batch()
    with torch.no_grad():
        reference = torch.log_softmax(generator(**inputs).logits, dim=-1)
        state = generator.encode(inputs["visual"], inputs["visual_mask"], inputs["labels"])
        for t in range(1, 8):
            prefix = inputs["targets"][:, :t]
            torch.testing.assert_close(generator.step(state, prefix), reference[:, t - 1], rtol=0, atol=1e-4)
            assert state.prefix.shape[1] == t and state.cache[0][0].shape[2] == t
        other = inputs["targets"][:, :5].flip(0)  # not an extension of the cached prefix: decoded afresh
        fresh = generator.encode(inputs["visual"], inputs["visual_mask"], inputs["labels"])
        torch.testing.assert_close(generator.step(state.select(torch.tensor([2, 1, 0])), other),
                                   generator.step(fresh.select(torch.tensor([2, 1, 0])), other), rtol=0, atol=1e-5)


def test_xpronet_attends_only_the_groups_of_positive_labels():
    generator = tiny().eval()
    inputs = batch(size=1)  # labels: groups 1 and 4
    out = generator(**inputs)
    memory = generator.encode(inputs["visual"], inputs["visual_mask"], inputs["labels"]).memory[0][0]
    rows = lambda group: slice(group * PER_GROUP, (group + 1) * PER_GROUP)  # noqa: E731
    with torch.no_grad():  # a change of unselected groups that keeps the mean prototype (which centring removes)
        change = torch.randn(3, PER_GROUP, PROTO_DIM) * 5
        for group, delta in zip((0, 2, 13), change - change.mean(dim=(0, 1))):
            generator.xpronet.matrix[rows(group)] += delta
    same = generator(**inputs)
    torch.testing.assert_close(same.logits, out.logits, rtol=0, atol=1e-6)
    torch.testing.assert_close(same.loss, out.loss, rtol=0, atol=1e-6)
    with torch.no_grad():
        generator.xpronet.matrix[rows(4)] += torch.randn(PER_GROUP, PROTO_DIM) * 5
    assert not torch.allclose(generator(**inputs).logits, out.logits, atol=1e-4)
    # the visual side too: the decoder's memory holds the encoder output fused with its prototype response
    changed = generator.encode(inputs["visual"], inputs["visual_mask"], inputs["labels"]).memory[0][0]
    assert not torch.allclose(changed, memory, atol=1e-4)


def test_prototype_responses_start_on_the_scale_of_the_words():
    """Prototypes as kmeans-init writes them (a unit visual and a unit text half, norm sqrt 2) must
    not answer at a small fraction of the word embeddings' scale, or the labels they carry are
    drowned in the fusion with the words (the demo's XProNet then ignored its labels)."""
    halves = np.random.default_rng(0).normal(size=(2, GROUPS, PER_GROUP, PROTO_DIM // 2))
    halves /= np.linalg.norm(halves, axis=-1, keepdims=True)
    generator = build_generator(tiny().config, np.concatenate(list(halves), axis=-1)).eval()
    inputs = batch()
    with torch.no_grad():
        condition = generator.xpronet.condition(inputs["labels"], 3, torch.device("cpu"))
        words, _ = generator._words(inputs["targets"][:, :-1], 0, None)
        _, response = generator.xpronet.respond_text(words, condition)
    assert response.pow(2).mean().sqrt() > 0.12 * words.pow(2).mean().sqrt()  # 0.075 without the LayerNorm, 0.19 with


def test_centred_prototypes_tell_label_groups_apart():
    """k-means centres of one domain's features share a large common part (the demo's: mean pairwise
    cosine 0.78); after the projection and LayerNorm the responses to different labels then barely
    differ, and the decoder ignores its labels until it has memorised the training reports.
    Centring the matrix (center_prototypes) keeps the groups apart."""
    rng = np.random.default_rng(0)
    # a common part, a group part and a prototype part: mean pairwise cosine 0.74, of group means 0.85
    matrix = (rng.normal(size=PROTO_DIM) + rng.normal(size=(GROUPS, 1, PROTO_DIM)) * 0.25
              + rng.normal(size=(GROUPS, PER_GROUP, PROTO_DIM)) * 0.46)
    inputs = batch(size=1)
    words = torch.randn(1, 6, 32, generator=torch.Generator().manual_seed(0))

    def label_gap(center: bool) -> float:
        """Relative difference of the text responses to two disjoint label sets."""
        generator = build_generator(tiny(center_prototypes=center).config, matrix).eval()
        other = torch.zeros_like(inputs["labels"])
        other[0, 7] = 1
        with torch.no_grad():
            first, second = (generator.xpronet.respond_text(words, generator.xpronet.condition(labels, 1, words.device))[1]
                             for labels in (inputs["labels"], other))
        return float((first - second).norm() / first.norm())

    plain, centred = label_gap(False), label_gap(True)
    assert centred > 0.8 and centred > 2 * plain  # 1.0 and 0.29 here; 0.97-1.04 and 0.24-0.40 over three seeds


def test_configs_from_before_centring_load_uncentred():
    """A checkpoint written before center_prototypes existed keeps the behaviour it was trained with."""
    old = {k: v for k, v in tiny().config.to_dict().items() if k != "center_prototypes"}
    assert GeneratorConfig.from_dict(old).center_prototypes is False
    base = tiny("base").config
    assert "center_prototypes" not in base.to_dict() and GeneratorConfig.from_dict(base.to_dict()) == base


def test_selection_rule_for_no_positive_and_unknown_labels():
    prototypes = tiny().xpronet
    labels = torch.zeros(3, GROUPS)
    labels[0, 3] = 1
    labels[2, 5] = float("nan")
    groups, known = prototypes.select(labels, 3, torch.device("cpu"))
    assert groups[0].nonzero().flatten().tolist() == [3]
    assert groups[1].nonzero().flatten().tolist() == [GROUPS - 1]  # nothing positive: No Finding
    assert groups[2].all() and known.tolist() == [True, True, False]  # unknown row: every group
    groups, known = prototypes.select(None, 2, torch.device("cpu"))
    assert groups.all() and not known.any()
    with pytest.raises(ValueError, match="labels of shape"):
        prototypes.select(torch.zeros(2, 5), 2, torch.device("cpu"))


def test_topk_attention_keeps_exactly_k_weights():
    torch.manual_seed(0)
    attention = TopKAttention(d_model=16, heads=2, topk=3)
    keys, values = attention.keys_values(torch.randn(1, 10, 16))
    mask = torch.zeros(2, 10, dtype=torch.bool)
    mask[0] = True
    mask[1, [2, 7]] = True  # fewer selected than k: all of them
    _, weights = attention(torch.randn(2, 5, 16), keys, values, mask)
    nonzero = (weights > 0).sum(-1)
    assert (nonzero[0] == 3).all() and (nonzero[1] == 2).all()
    assert (weights[1][..., ~mask[1]] == 0).all()
    torch.testing.assert_close(weights.sum(-1), torch.ones(2, 2, 5))


def test_multilabel_contrastive_hand_checked():
    a, b = [1, 0, 0, 0], [0, 1, 0, 0]
    aligned = torch.tensor([[1.0, 0.0], [2.0, 0.0], [0.0, 1.0]])
    labels = torch.tensor([a, a, b], dtype=torch.bool)
    assert multilabel_contrastive(aligned, labels, 0.4, 1.5).item() == pytest.approx(0.0, abs=1e-6)
    # study 1 now points away from its twin (cos 0, target 1) and onto study 2 (cos 1 > margin 0.4):
    # ordered pairs (0,1),(1,0) cost 1 each, (1,2),(2,1) cost 0.6 each, (0,2),(2,0) nothing -> 3.2 / 6
    violated = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.0, 1.0]])
    assert multilabel_contrastive(violated, labels, 0.4, 1.5).item() == pytest.approx(3.2 / 6, abs=1e-6)
    # partial overlap: hamming 1 of 4 -> target 1.5 ** -0.25; at cos 0.6 the shortfall is paid both ways
    partial = torch.tensor([[1, 1, 0, 0], [1, 0, 0, 0]], dtype=torch.bool)
    pooled = torch.tensor([[1.0, 0.0], [0.6, 0.8]])
    expected = 1.5 ** -0.25 - 0.6
    assert multilabel_contrastive(pooled, partial, 0.4, 1.5).item() == pytest.approx(expected, abs=1e-6)
    assert multilabel_contrastive(pooled[:1], partial[:1], 0.4, 1.5).item() == 0.0


REPORTS = [[5, 9, 2, 14, 7, 3, 11, 6, 18], [12, 4, 4, 8, 16, 1, 10]]


@pytest.fixture(scope="module")
def overfit() -> tuple[ReportGenerator, dict[str, torch.Tensor]]:
    """A tiny XProNet trained (300 Adam steps) on two studies until it knows their reports by heart."""
    generator = tiny(dropout=0.0, max_length=14)
    targets = torch.zeros(2, 12, dtype=torch.long)
    target_mask = torch.zeros(2, 12, dtype=torch.bool)
    for row, words in enumerate(REPORTS):
        targets[row, 1:1 + len(words)] = torch.tensor(words)
        target_mask[row, :len(words) + 2] = True
    inputs = batch(size=2)
    inputs.update(targets=targets, target_mask=target_mask)
    optimiser = torch.optim.Adam(generator.parameters(), lr=3e-3)
    for _ in range(300):
        optimiser.zero_grad()
        generator(**inputs).loss.backward()
        optimiser.step()
    return generator, inputs


def test_tiny_model_overfits_two_reports_and_both_decoders_reproduce_them(overfit):
    generator, inputs = overfit
    assert generator(**inputs).terms["ce"].item() < 0.05
    args = (inputs["visual"], inputs["visual_mask"], inputs["labels"])
    assert generator.training
    assert greedy(generator, *args, max_length=14) == REPORTS
    assert beam_search(generator, *args, beam_size=3, max_length=14) == REPORTS
    assert generator.training  # decoding restores the mode it found


@pytest.mark.parametrize("seed", [5, 7])
def test_beam_of_one_equals_greedy(seed):
    generator = tiny(seed=seed)
    inputs = batch(seed=seed)
    args = (inputs["visual"], inputs["visual_mask"], inputs["labels"])
    expected = greedy(generator, *args, max_length=12)
    assert beam_search(generator, *args, beam_size=1, max_length=12, block_trigrams=False) == expected
    assert all(1 <= len(ids) <= 11 for ids in expected)


class _State:
    """Stateless stand-in for EncoderState."""

    def repeat_interleave(self, k: int) -> "_State":
        return self

    def select(self, index: torch.Tensor) -> "_State":
        return self


class Cycler(nn.Module):
    """A 'model' that wants to say 1 2 3 1 2 3 ... forever (then 4, then 5; EOS least)."""

    def encode(self, visual, visual_mask, labels):
        return _State()

    def step(self, state, prefix):
        logits = torch.tensor([-9.0, -5.0, -5.0, -5.0, -1.0, -2.0]).repeat(len(prefix), 1)
        logits[torch.arange(len(prefix)), prefix[:, -1] % 3 + 1] = 0.0
        return torch.log_softmax(logits, dim=-1)


def trigrams(ids: list[int]) -> list[tuple[int, ...]]:
    return [tuple(ids[i:i + 3]) for i in range(len(ids) - 2)]


def test_trigram_blocking_never_repeats_a_trigram():
    visual, mask = torch.zeros(2, 1, 1), torch.ones(2, 1, dtype=torch.bool)
    free = beam_search(Cycler(), visual, mask, None, beam_size=3, max_length=20, block_trigrams=False)
    assert len(set(trigrams(free[0]))) < len(trigrams(free[0]))  # the model does repeat itself
    for beams in (1, 3):
        for ids in beam_search(Cycler(), visual, mask, None, beam_size=beams, max_length=20):
            assert len(ids) == 19 and len(set(trigrams(ids))) == len(trigrams(ids))
    log_probs = torch.zeros(1, 6)
    blocked = block_repeated_trigrams(log_probs, torch.tensor([[1, 2, 3, 1, 2]]))
    assert torch.isinf(blocked[0, 3]) and torch.isfinite(blocked[0, [0, 1, 2, 4, 5]]).all()


class Hesitant(nn.Module):
    """Stops at once with probability 0.5, else says 1 four times (each at 0.98) and stops: the
    empty report has the larger total log-probability (-0.69 vs -0.77), the long one the larger
    mean per token (-0.15 vs -0.69)."""

    def encode(self, visual, visual_mask, labels):
        return _State()

    def step(self, state, prefix):
        said = (prefix[:, 1:] == 1).sum(dim=1)
        stop = torch.where(said == 0, 0.5, torch.where(said < 4, 0.02, 0.98))
        probs = torch.zeros(len(prefix), 3)
        probs[:, 0], probs[:, 1], probs[:, 2] = stop, (1 - stop) * 0.999, (1 - stop) * 0.001
        return probs.log()


def test_length_penalty_ranks_by_log_probability_per_token():
    visual, mask = torch.zeros(1, 1, 1), torch.ones(1, 1, dtype=torch.bool)
    search = dict(beam_size=3, max_length=10, block_trigrams=False)  # 1 1 1 1 repeats a trigram
    assert beam_search(Hesitant(), visual, mask, None, **search) == [[]]
    assert beam_search(Hesitant(), visual, mask, None, **search, length_penalty=1.0) == [[1, 1, 1, 1]]


def test_mbr_picks_the_typical_report_where_beam_search_picks_the_most_probable():
    visual, mask = torch.zeros(1, 1, 1), torch.ones(1, 1, dtype=torch.bool)
    assert beam_search(Hesitant(), visual, mask, None, beam_size=3, max_length=10, block_trigrams=False) == [[]]
    # half the samples are empty, which shares nothing with any other sample; the other half agree
    chosen = mbr(Hesitant(), visual, mask, None, num_samples=8, max_length=10,
                 generator=torch.Generator().manual_seed(0))
    assert chosen == [[1, 1, 1, 1]]


def test_sampling_follows_the_model_and_its_seed():
    visual, mask = torch.zeros(2, 1, 1), torch.ones(2, 1, dtype=torch.bool)

    def draw(seed: int, temperature: float = 1.0) -> list[list[list[int]]]:
        return sample(Hesitant(), visual, mask, None, 1000, 10, temperature=temperature,
                      generator=torch.Generator().manual_seed(seed))

    first = draw(0)
    assert first == draw(0) and first != draw(1)
    assert len(first) == 2 and all(len(study) == 1000 for study in first)
    empty = sum(report == [] for report in first[0]) / 1000
    assert 0.45 < empty < 0.55  # the model stops at once with probability 0.5
    said = collections.Counter(tuple(report) for report in first[0] if report)
    assert said.most_common(1)[0][0] == (1, 1, 1, 1)
    # a temperature near 0 sharpens every step to its most probable token: stopping at once (0.5 > 0.4995)
    assert all(report == [] for report in draw(0, temperature=1e-4)[0])


def test_sampling_near_zero_temperature_is_greedy_while_finished_reports_leave_the_batch(overfit):
    generator, inputs = overfit  # its two reports end at different steps, so the batch shrinks mid-way
    args = (inputs["visual"], inputs["visual_mask"], inputs["labels"])
    drawn = sample(generator, *args, 3, 14, temperature=1e-6, generator=torch.Generator().manual_seed(0))
    assert drawn == [[report] * 3 for report in REPORTS]


def test_sentence_bleu_and_consensus():
    assert sentence_bleu([1, 2, 3, 4, 5], [1, 2, 3, 4, 5]) == pytest.approx(1.0)
    assert sentence_bleu([6, 7], [1, 2, 3]) == 0.0 and sentence_bleu([], [1]) == 0.0
    # a correct half: every (smoothed) precision is 1, the brevity penalty exp(1 - 8 / 4)
    assert sentence_bleu([1, 2, 3, 4], [1, 2, 3, 4, 5, 6, 7, 8]) == pytest.approx(math.exp(-1.0))
    # no shared 4-gram still scores by the shorter matches: unigrams 3/4, bigrams (1+1)/(3+1), ...
    expected = (3 / 4 * 2 / 4 * 1 / 3 * 1 / 2) ** 0.25
    assert sentence_bleu([1, 2, 9, 3], [1, 2, 3, 4]) == pytest.approx(expected)
    # the odd one out is never the consensus, however it is ordered
    for candidates in ([[1, 2, 3, 4], [1, 2, 3, 4, 5], [9, 9]], [[9, 9], [1, 2, 3, 4, 5], [1, 2, 3, 4]]):
        assert consensus(candidates) in ([1, 2, 3, 4], [1, 2, 3, 4, 5])
    assert consensus([[3], [3], [7]]) == [3]


def test_beam_search_over_a_batch_equals_each_study_alone(overfit):
    generator, inputs = overfit
    other = batch(seed=7)  # its study 1 has one view only
    visual = torch.cat([inputs["visual"], other["visual"][1:2]])
    mask = torch.cat([inputs["visual_mask"], other["visual_mask"][1:2]])
    labels = torch.cat([inputs["labels"], other["labels"][1:2]])
    together = beam_search(generator, visual, mask, labels, max_length=14)
    alone = [beam_search(generator, visual[i:i + 1], mask[i:i + 1], labels[i:i + 1], max_length=14)[0]
             for i in range(3)]
    assert together == alone
    assert together[:2] == REPORTS


def test_bad_prototype_shape_is_refused():
    config = GeneratorConfig(vocab_size=VOCAB, model="xpronet", d_model=32, heads=4, num_classes=GROUPS,
                             protos_per_class=PER_GROUP, proto_dim=PROTO_DIM)
    build_generator(config, np.zeros((GROUPS * PER_GROUP, PROTO_DIM)))  # flattened is fine
    for shape in [(GROUPS, PER_GROUP + 2, PROTO_DIM), (GROUPS, PER_GROUP, PROTO_DIM + 1), (GROUPS, PER_GROUP)]:
        with pytest.raises(ValueError, match="does not fit the generator config"):
            build_generator(config, np.zeros(shape))
    with pytest.raises(ValueError, match="does not use them"):
        build_generator(GeneratorConfig(vocab_size=VOCAB), np.zeros((GROUPS, PER_GROUP, PROTO_DIM)))


def test_visual_extractor_and_cached_tokens_share_one_layout():
    torch.manual_seed(0)
    encoder = ImageEncoder("tiny", nn.Conv2d(3, CHANNELS, kernel_size=8, stride=8), CHANNELS)  # 16 px -> 2 x 2
    extractor = VisualExtractor(encoder, max_views=2)
    pixels = torch.randint(0, 256, (2, 2, 16, 16), dtype=torch.uint8)
    view_mask = torch.tensor([[True, True], [True, False]])
    tokens, mask = extractor(pixels, view_mask)
    assert tokens.shape == (2, 2 * PATCHES, CHANNELS) and mask.tolist()[1] == [True] * 4 + [False] * 4
    assert (tokens[1, PATCHES:] == 0).all()
    torch.testing.assert_close(extractor(pixels.float() / 255, view_mask)[0], tokens)
    one_view, one_mask = extractor(pixels[:, :1], view_mask[:, :1])  # padded up to max_views
    torch.testing.assert_close(one_view[:, :PATCHES], tokens[:, :PATCHES])
    assert one_mask[:, PATCHES:].sum() == 0

    grid = encoder(encoder.prepare(pixels[0, 1:2].numpy())).flatten(2).transpose(1, 2)
    torch.testing.assert_close(tokens[0, PATCHES:], grid[0])
    patches = tokens.view(2, 2, PATCHES, CHANNELS).half()
    cached, cached_mask = cached_tokens(patches, view_mask)
    assert cached.dtype == torch.float32 and torch.equal(cached_mask, mask)
    torch.testing.assert_close(cached, tokens, rtol=1e-3, atol=1e-3)
    out = tiny("base").eval()(tokens, mask, *[batch(size=2)[k] for k in ("targets", "target_mask")])
    assert math.isfinite(out.loss.item())
