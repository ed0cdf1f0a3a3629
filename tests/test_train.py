"""Training, resuming, DDP, generation and evaluation of trained runs, on a tiny demo chain."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import TINY, copy_chain, invoke, needs_demo, run_killed, same_weights, train  # tests/ is on sys.path under pytest
import stages.generation.decoding
import stages.training.model
from stages.evaluation.nlg import NlgScorer
from stages.training.distributed import Dist, epoch_order
from stages.training.model import load_model


def test_epoch_order_splits_one_permutation_across_processes():
    rows = np.arange(10) * 3
    alone = epoch_order(rows, seed=1, epoch=2, context=Dist())
    assert sorted(alone) == sorted(rows) and not np.array_equal(alone, rows)
    assert np.array_equal(alone, epoch_order(rows, 1, 2, Dist()))
    assert not np.array_equal(alone, epoch_order(rows, 1, 3, Dist()))
    shares = [epoch_order(rows, 1, 2, Dist(rank, 3)) for rank in range(3)]
    assert [len(s) for s in shares] == [4, 4, 4]  # padded so every process takes the same steps
    assert set(np.concatenate(shares)) == set(rows)
    assert np.array_equal(np.stack(shares, 1).ravel()[:10], alone)


@needs_demo
def test_train_writes_a_selected_self_contained_run(chain):
    output = train(chain, "--model", "base", "--name", "base", "--epochs", 2)
    run = chain / "demo" / "runs" / "base"
    assert "1 process(es) on cpu" in output
    for name in ("model.pt", "run.json", "log.jsonl", "curves.png", "predictions_val.csv", "last.pt", "best.pt"):
        assert (run / name).exists(), name
    info = json.loads((run / "run.json").read_text())
    # the demo selects on the mean of validation BLEU-4 and CE micro-F1 (pipelines/demo.toml)
    assert info["selected_on"] == "val bleu4_ce_f1" and info["oracle"] is False and info["best_epoch"] in (1, 2)
    epochs = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    epochs = [e for e in epochs if e["event"] == "epoch"]
    assert [e["epoch"] for e in epochs] == [1, 2]
    for e in epochs:
        assert e["val_bleu4_ce_f1"] == pytest.approx((e["val_bleu4"] + e["val_ce_f1"]) / 2)
    best = max(epochs, key=lambda e: e["val_bleu4_ce_f1"])
    assert info["best_epoch"] == best["epoch"] and info["val_bleu4_ce_f1"] == pytest.approx(best["val_bleu4_ce_f1"])
    saved = load_model(run / "model.pt")
    assert saved.config.d_model == 32 and saved.model.visual.mode == "cached"
    older = torch.load(run / "model.pt", weights_only=True)
    older["format"] = "rrg-report-model/1"
    torch.save(older, chain / "older.pt")
    with pytest.raises(ValueError, match="another version of rrg-stage .* train it again"):
        load_model(chain / "older.pt")
    assert "up to date" in train(chain, "--model", "base", "--name", "base", "--epochs", 2)
    # an invalid option is refused before anything is touched: a typo never replaces a finished run
    for bad in (("--monitor", "bleu"), ("--epochs", 0)):
        assert "must be" in train(chain, "--model", "base", "--name", "base", "--epochs", 2, *bad, code=2)
        assert (run / "model.pt").exists() and (run / "best.pt").exists()
    # other options for a finished run: it is trained again from scratch and replaced
    (run / "predictions_test.csv").write_text("id,report\n")  # stands for evaluate's results of the old model
    output = train(chain, "--model", "base", "--name", "base", "--epochs", 3)
    assert "finished run with other options" in output and "resuming" not in output
    assert [json.loads(line)["epoch"] for line in (run / "log.jsonl").read_text().splitlines()
            if '"event": "epoch"' in line] == [1, 2, 3]
    assert not (run / "predictions_test.csv").exists()
    # other options for an unfinished run (no model.pt): its last.pt is refused, never lost or mixed in
    (run / "model.pt").unlink()
    assert "other options or inputs" in train(chain, "--model", "base", "--name", "base", "--epochs", 2, code=1)


@needs_demo
def test_killed_mid_epoch_resumes_to_the_same_weights(chain, tmp_path):
    """A process SIGKILLed inside epoch 2 continues from last.pt and ends bit-identical to an
    uninterrupted run (which also shows that training is deterministic under a seed)."""
    args = ["--model", "xpronet", "--epochs", 3, "--checkpoint-every", 2, "--oracle-labels"]
    whole = copy_chain(chain, tmp_path / "whole")
    train(whole, *args)
    cut = copy_chain(chain, tmp_path / "cut")
    # the 10th batch read (epoch 2 of 8 training batches; last.pt saved at its step 2) kills the process
    killed = run_killed("stages.training.data", "StudySource", 11, "train", "--dataset", "demo", "--artifacts", cut,
                        *TINY, *args)
    assert killed.returncode == -9, killed.stderr
    run = cut / "demo" / "runs" / "xpronet"
    assert not (run / "model.pt").exists()
    state = torch.load(run / "last.pt", map_location="cpu", weights_only=False)["state"]
    assert (state["epoch"], state["step"]) in ((1, 2), (1, 4), (1, 6))
    output = train(cut, *args)
    assert "resuming after epoch 1, step" in output
    assert same_weights(whole / "demo/runs/xpronet/model.pt", run / "model.pt")
    other_seed = copy_chain(chain, tmp_path / "seed")
    invoke("train", "--dataset", "demo", "--artifacts", other_seed, "--seed", 1, *TINY, *args)
    assert not same_weights(whole / "demo/runs/xpronet/model.pt", other_seed / "demo/runs/xpronet/model.pt")


@needs_demo
def test_torchrun_trains_with_two_gloo_processes(chain, tmp_path):
    art = copy_chain(chain, tmp_path)
    torchrun = Path(sys.executable).with_name("torchrun")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    command = [str(torchrun), "--standalone", "--nproc_per_node", "2", "-m", "stages.cli", "train", "--dataset",
               "demo", "--artifacts", str(art), *map(str, TINY), "--model", "base", "--epochs", "2"]
    result = subprocess.run(command, capture_output=True, text=True, env=env, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "2 process(es) on cpu" in result.stdout
    again = subprocess.run(command, capture_output=True, text=True, env=env, timeout=300)  # no rank left waiting
    assert again.returncode == 0 and "up to date" in again.stdout, again.stderr[-3000:]
    run = art / "demo" / "runs" / "base"
    epochs = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()
              if json.loads(line)["event"] == "epoch"]
    assert [e["epoch"] for e in epochs] == [1, 2]  # rank 0 alone writes
    assert load_model(run / "model.pt").config.d_model == 32


@needs_demo
def test_xpronet_is_conditioned_on_the_classifier_unless_flagged(chain):
    train(chain, "--model", "xpronet", "--name", "xpronet", "--epochs", 1)
    run = chain / "demo" / "runs" / "xpronet"
    info = json.loads((run / "run.json").read_text())
    assert info["oracle"] is False and "diagnosis.pt" in info["labels"]
    manifest = json.loads((run / "model.pt.meta.json").read_text())
    assert {"adm", "diagnosis", "prototypes"} <= set(manifest["inputs"])
    train(chain, "--model", "xpronet", "--name", "oracle", "--epochs", 1, "--oracle-labels")
    assert "ORACLE" in json.loads((chain / "demo/runs/oracle/run.json").read_text())["labels"]


@needs_demo
def test_end_to_end_visual_mode_trains_the_encoder(chain, tmp_path):
    art = copy_chain(chain, tmp_path)
    train(art, "--model", "base", "--epochs", 1, "--visual", "end-to-end", "--weights", "random", "--crop", 56)
    saved = load_model(art / "demo/runs/base/model.pt")
    assert saved.model.visual.mode == "end-to-end" and saved.model.visual.input_size == 56
    assert saved.model.extractor is not None


@needs_demo
def test_generate_reads_files_folders_and_csv_and_names_bad_files(chain, tmp_path):
    train(chain, "--model", "xpronet", "--name", "xpronet", "--epochs", 1)
    run = chain / "demo" / "runs" / "xpronet"
    study = next(p for p in sorted((chain / "demo" / "raw" / "images").iterdir()) if p.is_dir())
    views = sorted(study.iterdir())
    output = invoke("generate", "--run", run, views[0], study)
    assert f"== {views[0].stem}" in output and f"== {study.name}" in output and "predicted findings" in output
    table = tmp_path / "studies.csv"
    table.write_text("id,image_path\n" + "".join(f"s1,{v}\n" for v in views))
    out = tmp_path / "reports.csv"
    invoke("generate", "--run", run, table, "--output", out, "--beam-size", 1)
    assert out.read_text().startswith("id,report\ns1,")
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"not an image")
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(tmp_path / "fine.png")
    output = invoke("generate", "--run", run, tmp_path / "fine.png", broken, code=1)
    assert str(broken) in output and "nothing was generated" in output
    assert "does not exist" in invoke("generate", "--run", run, tmp_path / "absent.png", code=1)


@needs_demo
def test_evaluate_run_decodes_every_test_study(chain, monkeypatch):
    monkeypatch.setattr(NlgScorer, "meteor", lambda self, gts, res: 0.5)  # no Java needed here
    train(chain, "--model", "base", "--name", "base-lp", "--epochs", 2, "--length-penalty", 0.5)
    run = chain / "demo" / "runs" / "base-lp"
    penalties = []  # the decoding the run was selected with is the one it is evaluated with
    search = stages.training.model.beam_search
    monkeypatch.setattr(stages.training.model, "beam_search",
                        lambda *args, **kwargs: penalties.append(kwargs["length_penalty"]) or search(*args, **kwargs))
    invoke("evaluate", "--run", run)
    metrics = json.loads((run / "metrics_test.json").read_text())
    predictions = (run / "predictions_test.csv").read_text().splitlines()
    assert metrics["n_studies"] == len(predictions) - 1 > 0
    assert metrics["oracle"] is False and metrics["decoding"]["beam_size"] == 2
    assert metrics["decoding"]["length_penalty"] == 0.5 and penalties and set(penalties) == {0.5}
    assert (run / "viewer_test.html").exists()


@needs_demo
def test_mbr_run_validates_evaluates_and_generates_with_its_seeded_samples(chain, monkeypatch):
    monkeypatch.setattr(NlgScorer, "meteor", lambda self, gts, res: 0.5)
    train(chain, "--model", "base", "--name", "base-mbr", "--epochs", 1, "--mbr-samples", 3, "--mbr-temperature", 0.8)
    run = chain / "demo" / "runs" / "base-mbr"
    decoding = json.loads((run / "run.json").read_text())["decoding"]
    assert decoding["mbr_samples"] == 3 and decoding["mbr_temperature"] == 0.8 and decoding["block_trigrams"] is False
    drawn = []  # validation, evaluate and generate all decode by MBR, never by beam search
    sampler = stages.generation.decoding.sample
    monkeypatch.setattr(stages.generation.decoding, "sample",
                        lambda *args, **kwargs: drawn.append((args[4], kwargs["temperature"])) or sampler(*args, **kwargs))
    monkeypatch.setattr(stages.training.model, "beam_search", None)
    invoke("evaluate", "--run", run)
    assert json.loads((run / "metrics_test.json").read_text())["decoding"]["mbr_samples"] == 3
    assert drawn and set(drawn) == {(3, 0.8)}
    first = (run / "predictions_test.csv").read_text()
    (run / "predictions_test.csv").unlink()
    invoke("evaluate", "--run", run, "--force")
    assert (run / "predictions_test.csv").read_text() == first  # the run's seed fixes the samples
    assert "--mbr-samples must be 0" in train(chain, "--model", "base", "--name", "bad", "--mbr-samples", 1, code=2)
    assert not (chain / "demo" / "runs" / "bad").exists()
