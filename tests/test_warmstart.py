"""The warm-started encoder-decoder: sub-word targets and their way back to cleaned text, the
pretrained decoder with new cross-attention, its transformers cache in greedy and beam decoding,
word-trigram blocking, self-contained checkpoints and `train --model warmstart` on the tiny chain.

Decoders here are tiny (a BERT or GPT-2 config built in the test, random weights, a tokenizer
made from a handful of words) and saved as local Hugging Face folders, as a user's would be.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch

from conftest import invoke, needs_demo  # tests/ is on sys.path under pytest
from stages.evaluation.nlg import NlgScorer
from stages.generation.config import GeneratorConfig
from stages.generation.decoding import (beam_search, block_repeated_trigrams, block_repeated_word_trigrams, greedy,
                                       sample)
from stages.generation.models import build_generator
from stages.generation.warmstart import WarmStartGenerator, decoder_config, decoder_size
from stages.text.subword import SubwordTokenizer, r2gen_span
from stages.training.inference import image_reliance
from stages.training.model import VisualSpec, load_model, save_model
from stages.training.warmstart import WarmStart, build_warmstart

from transformers import (BertConfig, BertLMHeadModel, BertTokenizer, GPT2Config, GPT2LMHeadModel,  # noqa: E402
                          GPT2TokenizerFast, LlamaConfig)

REPORTS = ["the heart is normal in size . the lungs are clear .",
           "mild cardiomegaly . small left pleural effusion . no pneumothorax .",
           "left-sided pleural effusion . the heart is normal in size .",
           "no acute cardiopulmonary abnormality ."]
VISUAL_DIM, PATCHES = 8, 3


pytestmark = pytest.mark.usefixtures("one_thread")


def bert_folder(folder: Path, words: list[str], seed: int = 0) -> Path:
    """A tiny BERT decoder with a WordPiece vocabulary of `words` (plus pieces of "pleural")."""
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", ".", "-", "pl", "##eur", "##al"]
    vocab += sorted({w for text in words for w in text.replace("-", " ").split()} - set(vocab) - {"pleural"})
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "vocab.txt").write_text("\n".join(vocab) + "\n")
    BertTokenizer(str(folder / "vocab.txt")).save_pretrained(folder)
    torch.manual_seed(seed)
    config = BertConfig(vocab_size=len(vocab), hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=32, max_position_embeddings=128, is_decoder=True)
    BertLMHeadModel(config).save_pretrained(folder)
    return folder


def gpt2_folder(folder: Path) -> Path:
    """A tiny GPT-2 decoder with a byte-level BPE tokenizer trained on REPORTS."""
    from tokenizers import ByteLevelBPETokenizer

    bpe = ByteLevelBPETokenizer()
    bpe.train_from_iterator(REPORTS * 5, vocab_size=300, min_frequency=1, special_tokens=["<|endoftext|>"])
    tokenizer = GPT2TokenizerFast(tokenizer_object=bpe, bos_token="<|endoftext|>", eos_token="<|endoftext|>",
                                  unk_token="<|endoftext|>")
    folder.mkdir(parents=True, exist_ok=True)
    tokenizer.save_pretrained(folder)
    torch.manual_seed(0)
    GPT2LMHeadModel(GPT2Config(vocab_size=len(tokenizer), n_embd=16, n_layer=2, n_head=2, n_positions=128,
                               bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id)
                    ).save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def bert(tmp_path_factory) -> Path:
    return bert_folder(tmp_path_factory.mktemp("bert") / "decoder", REPORTS)


def generator(folder: Path, pretrained: bool = True, seed: int = 0) -> tuple[WarmStartGenerator, SubwordTokenizer]:
    values = decoder_config(folder)
    hidden, vocab = decoder_size(values)
    tokenizer = SubwordTokenizer.from_folder(folder, "iu")
    config = GeneratorConfig(vocab_size=vocab, model="warmstart", max_length=24, d_model=hidden, visual_dim=VISUAL_DIM,
                             decoder_config=values, bos_id=tokenizer.bos_id, eos_id=tokenizer.eos_id)
    torch.manual_seed(seed)
    model = build_generator(config, decoder_weights=folder if pretrained else None)
    model.word_start[:len(tokenizer)] = tokenizer.word_starts()
    model.banned.copy_(tokenizer.banned(vocab))
    return model, tokenizer


def inputs(tokenizer: SubwordTokenizer, seed: int = 0) -> dict[str, torch.Tensor]:
    """Three studies (the second has one view) with REPORTS[:3] as targets."""
    g = torch.Generator().manual_seed(seed)
    visual = torch.randn(3, 2 * PATCHES, VISUAL_DIM, generator=g)
    mask = torch.ones(3, 2 * PATCHES, dtype=torch.bool)
    mask[1, PATCHES:] = False
    ids, lengths = tokenizer.encode_batch(REPORTS[:3], 24)
    targets = torch.from_numpy(ids.astype(np.int64))
    return {"visual": visual, "visual_mask": mask, "targets": targets,
            "target_mask": torch.arange(24)[None] < torch.from_numpy(lengths.astype(np.int64))[:, None]}


class Uncached(torch.nn.Module):
    """The same decoder, but every step recomputes the whole prefix without a cache."""

    def __init__(self, model: WarmStartGenerator):
        super().__init__()
        self.model = model

    def encode(self, *args):
        return self.model.encode(*args)

    def step(self, state, prefix):
        state.cache = None
        return self.model.step(state, prefix)


# -- text ------------------------------------------------------------------------------------------

def test_subword_targets_decode_back_to_the_cleaned_text(bert):
    tokenizer = SubwordTokenizer.from_folder(bert, "iu")
    assert (tokenizer.bos_id, tokenizer.eos_id, tokenizer.pad_id) == (2, 3, 0)  # [CLS], [SEP], [PAD]
    ids, lengths = tokenizer.encode_batch(REPORTS, 24)
    assert ids[2, 0] == 2 and ids[2, lengths[2] - 1] == 3 and (ids[2, lengths[2]:] == 0).all()
    pieces = tokenizer.tokenizer.convert_ids_to_tokens(ids[2, 1:lengths[2] - 1].tolist())
    assert pieces[:5] == ["left", "-", "sided", "pl", "##eur"]
    for row, report in enumerate(REPORTS):  # WordPiece splits "left-sided"; decoding joins it again
        assert tokenizer.decode(ids[row, 1:].tolist()) == report
    assert tokenizer.decode([tokenizer.eos_id]) == ""
    cut, cut_lengths = tokenizer.encode_batch(REPORTS[:1], 5)
    assert cut_lengths[0] == 5 and tokenizer.eos_id not in cut[0]  # cut like R2Gen: the EOS can go
    assert r2gen_span("a b c d e .", 4) == "a b c"  # BOS is one of R2Gen's max_length ids
    starts = tokenizer.word_starts()
    assert not starts[tokenizer.tokenizer.convert_tokens_to_ids("##eur")] and starts[tokenizer.eos_id]
    restored = SubwordTokenizer.from_state(tokenizer.state())
    assert restored.encode_batch(REPORTS, 24)[0].tolist() == ids.tolist()


def test_word_trigram_blocking_on_sub_words():
    # words: a=1, b=2, "pl ##eur ##al"=(3, 4, 5); 4 continues a word, as do 5; 0 is EOS
    starts = torch.tensor([True, True, True, True, False, False])
    log_probs = torch.zeros(1, 6)
    # "pl##eur##al a pl##eur##al": the word "pleural" may come again (no word trigram repeats)
    again = torch.tensor([[3, 4, 5, 1, 3, 4, 5]])
    assert torch.isfinite(block_repeated_word_trigrams(log_probs, again, starts, eos=0)).all()
    # a token trigram blocker would forbid the repeat: "pl ##eur" then ##al
    assert torch.isinf(block_repeated_trigrams(log_probs, again[:, :-1])[0, 5])
    # "a b pleural b a b pleural": ending that word (a new word or EOS) would repeat "a b pleural"
    repeat = torch.tensor([[1, 2, 3, 4, 5, 2, 1, 2, 3, 4, 5]])
    blocked = block_repeated_word_trigrams(log_probs, repeat, starts, eos=0)
    assert torch.isinf(blocked[0, [0, 1, 2, 3]]).all() and torch.isfinite(blocked[0, [4, 5]]).all()
    # the same hypothesis one piece earlier ("... a b pl##eur") is still free to go on
    assert torch.isfinite(block_repeated_word_trigrams(log_probs, repeat[:, :-1], starts, eos=0)).all()


# -- the model -------------------------------------------------------------------------------------

def test_pretrained_weights_load_and_cross_attention_is_new(bert, tmp_path):
    model, tokenizer = generator(bert)
    saved = BertLMHeadModel.from_pretrained(str(bert))
    ours = model.decoder.state_dict()
    for name, value in saved.state_dict().items():
        assert torch.equal(ours[name], value), name
    assert model.loaded["new"] and all("crossattention" in name for name in model.loaded["new"])
    assert model.loaded["new_parameters"] > 0 and model.loaded["unused"] == []
    random, _ = generator(bert, pretrained=False)
    embeddings = "bert.embeddings.word_embeddings.weight"
    assert not torch.equal(random.decoder.state_dict()[embeddings], ours[embeddings])
    assert random.loaded is None and random.decoder.config.add_cross_attention


def test_training_forward_learns_from_the_images_through_cross_attention(bert):
    model, tokenizer = generator(bert)
    batch = inputs(tokenizer)
    out = model(**batch)
    assert out.logits.shape == (3, 23, len(tokenizer)) and torch.isfinite(out.loss)
    out.loss.backward()
    cross = model.decoder.bert.encoder.layer[0].crossattention.self.query.weight
    assert cross.grad is not None and cross.grad.abs().sum() > 0
    assert model.visual.project.weight.grad.abs().sum() > 0
    model.eval()
    with torch.no_grad():
        base = model(**batch).logits
        moved = model(**{**batch, "visual": batch["visual"] + 1.0}).logits
        hidden_view = batch["visual"].clone()
        hidden_view[1, PATCHES:] = 100.0  # the masked second view of study 1
        masked = model(**{**batch, "visual": hidden_view}).logits
    assert not torch.allclose(base, moved)
    assert torch.allclose(base, masked, atol=1e-5)


def test_cached_steps_match_the_training_forward(bert):
    model, tokenizer = generator(bert)
    model.eval()
    batch = inputs(tokenizer)
    with torch.no_grad():
        full = torch.log_softmax(model(**batch).logits.masked_fill(model.banned, float("-inf")), dim=-1)
        state = model.encode(batch["visual"], batch["visual_mask"])
        for t in range(1, 8):
            step = model.step(state, batch["targets"][:, :t])
            assert torch.allclose(step, full[:, t - 1], atol=1e-5), t
            assert torch.isinf(step[:, model.banned]).all()
        assert state.cache.get_seq_length() == 7  # each step ran only the newest token


def test_greedy_and_beam_search_with_the_cache_equal_recomputing_every_prefix(bert):
    model, tokenizer = generator(bert, seed=3)
    batch = inputs(tokenizer, seed=1)
    special = {"bos": tokenizer.bos_id, "eos": tokenizer.eos_id}
    args = (batch["visual"], batch["visual_mask"], None)
    fast = greedy(model, *args, 16, **special)
    assert fast == greedy(Uncached(model), *args, 16, **special)
    never = set(tokenizer.tokenizer.all_special_ids)  # EOS ends a report; the others are never written
    assert not any(never & set(ids) for ids in fast)
    beams = beam_search(model, *args, beam_size=3, max_length=16, word_start=model.word_start, **special)
    assert beams == beam_search(Uncached(model), *args, beam_size=3, max_length=16, word_start=model.word_start,
                                **special)
    one_by_one = [beam_search(model, batch["visual"][i:i + 1], batch["visual_mask"][i:i + 1], None, beam_size=3,
                              max_length=16, word_start=model.word_start, **special)[0] for i in range(3)]
    assert beams == one_by_one
    assert all(len(ids) <= 15 for ids in beams)
    # sampled reports that end leave the batch, and the cache is cut down with them
    drawn = [sample(decoder, *args, 4, 16, generator=torch.Generator().manual_seed(0), **special)
             for decoder in (model, Uncached(model))]
    assert drawn[0] == drawn[1] and len({len(ids) for study in drawn[0] for ids in study}) > 1


def test_a_gpt2_style_decoder_works_with_bos_equal_to_eos(tmp_path):
    folder = gpt2_folder(tmp_path / "gpt2")
    model, tokenizer = generator(folder)
    assert tokenizer.bos_id == tokenizer.eos_id and not tokenizer.joins_hyphens
    ids, _ = tokenizer.encode_batch(REPORTS, 40)
    assert [tokenizer.decode(row[1:].tolist()) for row in ids] == REPORTS
    assert all("cross" in name for name in model.loaded["new"])
    batch = inputs(tokenizer)
    assert torch.isfinite(model(**batch).loss)
    special = {"bos": tokenizer.bos_id, "eos": tokenizer.eos_id}
    beams = beam_search(model, batch["visual"], batch["visual_mask"], None, beam_size=2, max_length=12,
                        word_start=model.word_start, **special)
    assert beams == beam_search(Uncached(model), batch["visual"], batch["visual_mask"], None, beam_size=2,
                                max_length=12, word_start=model.word_start, **special)


def test_decoder_folders_that_cannot_serve_are_named(bert, tmp_path):
    from stages.generation.warmstart import decoder_folder

    with pytest.raises(ValueError, match="does not exist"):
        decoder_folder(str(tmp_path / "nowhere"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no config.json"):
        decoder_folder(str(tmp_path / "empty"))
    LlamaConfig(hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32,
                vocab_size=50).save_pretrained(tmp_path / "llama")
    with pytest.raises(ValueError, match="cannot give cross-attention"):
        decoder_config(decoder_folder(str(tmp_path / "llama")))
    no_tokenizer = tmp_path / "no-tokenizer"
    shutil.copytree(bert, no_tokenizer, ignore=shutil.ignore_patterns("vocab.txt", "tokenizer*"))
    with pytest.raises(ValueError, match="no usable tokenizer"):
        SubwordTokenizer.from_folder(no_tokenizer, "iu")


def test_model_pt_rebuilds_without_the_decoder_folder(bert, tmp_path):
    folder = shutil.copytree(bert, tmp_path / "moved-away")
    model, tokenizer = generator(folder)
    spec = VisualSpec("cached", "efficientnet-lite0", None, 64, 64)
    warm = WarmStart(folder, tokenizer, {}, (np.zeros((1, 2), np.int32), np.ones(1, np.int32)), {})
    report_model, record = build_warmstart(warm, model.config, spec, "pretrained")
    assert "new (cross-attention (every layer))" in record["summary"] and "frozen" in record["encoder"]
    save_model(tmp_path / "model.pt", report_model, tokenizer, model.config, report_model.state_dict(), {})
    shutil.rmtree(folder)
    saved = load_model(tmp_path / "model.pt")
    assert saved.config.model == "warmstart" and isinstance(saved.vocab, SubwordTokenizer)
    assert torch.equal(saved.model.generator.word_start, report_model.generator.word_start)
    batch = inputs(tokenizer)
    for name, value in report_model.state_dict().items():
        assert torch.equal(saved.model.state_dict()[name], value), name
    visual = batch["visual"].unflatten(1, (2, PATCHES))
    from stages.generation.decoding import Decoding
    from stages.training.data import Batch

    study = Batch(np.arange(3), visual, batch["visual_mask"][:, ::PATCHES], batch["targets"], batch["target_mask"],
                  torch.zeros(3, 14))
    search = Decoding(beam_size=2, max_length=10)
    assert saved.model.generate(study, search) == report_model.generate(study, search)


# -- the stage -------------------------------------------------------------------------------------

@needs_demo
def test_train_warmstart_and_its_random_ablation_evaluate_and_generate(chain, tmp_path, monkeypatch):
    monkeypatch.setattr(NlgScorer, "meteor", lambda self, gts, res: 0.5)  # no Java needed here
    with h5py.File(chain / "demo" / "dataset.h5", "r") as h5:
        cleaned = list(h5["studies/clean"].asstr()[:])
    folder = bert_folder(tmp_path / "decoder", cleaned)
    common = ("train", "--dataset", "demo", "--artifacts", chain, "--model", "warmstart", "--decoder", folder,
              "--epochs", 1, "--batch-size", 4, "--val-beam-size", 2, "--max-tokens", 40)
    output = invoke(*common, "--name", "warmstart")
    assert "warm start from" in output and "new (cross-attention (every layer))" in output
    run = chain / "demo" / "runs" / "warmstart"
    info = json.loads((run / "run.json").read_text())
    assert info["model"] == "warmstart" and info["init"] == "pretrained" and info["oracle"] is False
    assert info["warm_start"]["decoder"]["folder"] == str(folder) and "not label-conditioned" in info["labels"]
    manifest = json.loads((run / "model.pt.meta.json").read_text())
    assert manifest["inputs"]["decoder"]["path"] == str(folder.resolve())
    assert manifest["options"]["train"]["optimizer"] == "adamw" and manifest["options"]["train"]["lr"] == 5e-4
    assert manifest["options"]["targets"]["max_tokens"] == 40 and "adm" not in manifest["inputs"]
    saved = load_model(run / "model.pt")
    assert saved.config.max_length == 40 and saved.config.d_model == 16
    invoke("evaluate", "--run", run)
    metrics = json.loads((run / "metrics_test.json").read_text())
    assert metrics["init"] == "pretrained" and metrics["model"] == "warmstart"
    reliance = image_reliance(run, "test")  # the reports in the decoder's sub-words, the images swapped or not
    assert all(0 < value < 20 for value in reliance.values()) and reliance["own_images"] != reliance["other_images"]
    images = sorted((chain / "demo" / "raw" / "images").glob("*/*.png"))[:2]
    printed = invoke("generate", "--run", run, *images)
    assert all(path.stem in printed for path in images)
    assert "up to date" in invoke(*common, "--name", "warmstart")

    invoke(*common, "--name", "warmstart-random", "--init", "random")
    random = json.loads((chain / "demo/runs/warmstart-random/run.json").read_text())
    assert random["init"] == "random" and random["warm_start"]["decoder"]["folder"] is None
    assert "features.h5" in random["warm_start"]["encoder"]  # cached: the image tokens stay pretrained
    invoke(*common, "--name", "warmstart-e2e", "--init", "random", "--visual", "end-to-end")
    end_to_end = load_model(chain / "demo/runs/warmstart-e2e/model.pt").model.visual
    assert end_to_end.mode == "end-to-end" and end_to_end.weights == "random"
    assert "--weights" in invoke(*common, "--name", "bad", "--init", "random", "--visual", "end-to-end", "--weights",
                                 "file.pt", code=2)
    assert "--d-model" in invoke(*common, "--name", "bad", "--d-model", 32, code=2)
    assert "go with --model warmstart" in invoke("train", "--dataset", "demo", "--artifacts", chain, "--model", "base",
                                                 "--init", "random", code=2)
    assert "does not exist" in invoke(*common, "--decoder", tmp_path / "nowhere", "--name", "bad", code=1)
