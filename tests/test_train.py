"""The trainer and full-length evaluation on the tiny dataset."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch

from model import ModelConfig
from search.task import load_task
from search.train import TrainConfig, evaluate, predict, train


def test_batched_full_length_prediction_equals_one_at_a_time(tiny_dataset):
    task = load_task(tiny_dataset, seed=0, device=torch.device("cpu"))
    cfg = ModelConfig(n_classes=task.bank.n_speakers)
    result = train(cfg, TrainConfig(steps=20, eval_every=20, warmup_steps=2), task)
    ids = torch.cat([task.valid_ids, task.bank.test_ids()])
    batched = predict(result.model, task.bank, ids, max_frames=4096)  # several batches, mixed lengths
    alone = torch.cat([predict(result.model, task.bank, ids[i:i + 1]) for i in range(len(ids))])
    assert torch.equal(batched, alone)


def test_training_learns_and_reports_every_evaluation(tiny_dataset):
    task = load_task(tiny_dataset, seed=0, device=torch.device("cpu"))
    seen = []
    cfg = TrainConfig(steps=150, eval_every=50, warmup_steps=10, batch_size=16, lr=3e-3)
    result = train(ModelConfig(n_classes=task.bank.n_speakers, head="linear"), cfg, task,
                   on_eval=lambda step, m: seen.append((step, m["train_loss"])))
    assert [s for s, _ in seen] == [50, 100, 150]
    assert seen[-1][1] < seen[0][1]  # the loss goes down
    # Fits its training utterances (full length) well above chance; the tiny valid split is 6 utterances.
    assert evaluate(result.model, task.bank, task.train_ids) > 2.0 / task.bank.n_speakers


def test_same_seed_same_training(tiny_dataset):
    task = load_task(tiny_dataset, seed=0, device=torch.device("cpu"))
    cfg = TrainConfig(steps=10, eval_every=10, warmup_steps=2, seed=5)
    a = train(ModelConfig(n_classes=task.bank.n_speakers), cfg, task)
    b = train(ModelConfig(n_classes=task.bank.n_speakers), cfg, task)
    assert a.history[-1]["train_loss"] == b.history[-1]["train_loss"]
    for (name, p), q in zip(a.model.state_dict().items(), b.model.state_dict().values()):
        assert torch.equal(p, q), name


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU: run on the GPU machine")
@pytest.mark.parametrize("encoder, pooling, loss", [("transformer", "mean", "ce"), ("conformer", "asp", "aam")])
def test_cuda_graph_steps_train_like_eager_steps(tiny_dataset, encoder, pooling, loss):
    """The replayed graph sees each step's batch, learning rate and margin (aam warms its margin up over
    the first half here: a graph that froze the first step's values would train differently)."""
    task = load_task(tiny_dataset, seed=0, device=torch.device("cuda"))
    model_cfg = ModelConfig(n_classes=task.bank.n_speakers, encoder=encoder, pooling=pooling, loss=loss,
                            dropout=0.0, head="linear")
    cfg = TrainConfig(steps=60, eval_every=20, warmup_steps=10, seed=3, margin_warmup=0.5)
    graphed = train(model_cfg, cfg, task)
    eager = train(model_cfg, replace(cfg, cuda_graph=False), task)
    assert graphed.cuda_graph and not eager.cuda_graph
    for g, e in zip(graphed.history, eager.history):
        assert g["train_loss"] == pytest.approx(e["train_loss"], rel=0.03), (g, e)
    if loss == "ce":  # (a margin loss rises while its margin warms up)
        assert graphed.history[-1]["train_loss"] < graphed.history[0]["train_loss"]


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU: run on the GPU machine")
def test_cuda_graph_training_resumed_from_a_checkpoint_keeps_its_schedule(tiny_dataset, tmp_path):
    """A resumed run captures a new graph after loading the optimizer state (whose lr comes back from the
    checkpoint): it must go on following the lr schedule, like the run that was never stopped."""
    task = load_task(tiny_dataset, seed=0, device=torch.device("cuda"))
    model_cfg = ModelConfig(n_classes=task.bank.n_speakers, dropout=0.0, head="linear")
    cfg = TrainConfig(steps=60, eval_every=20, warmup_steps=10, seed=3)
    whole = train(model_cfg, cfg, task)

    class Stop(Exception):
        pass

    def stop_at_20(step, metrics):
        if step == 20:
            raise Stop

    checkpoint = tmp_path / "ckpt.pt"
    with pytest.raises(Stop):
        train(model_cfg, cfg, task, on_eval=stop_at_20, checkpoint=checkpoint)
    resumed = train(model_cfg, cfg, task, checkpoint=checkpoint)
    assert resumed.cuda_graph
    for w, r in zip(whole.history[1:], resumed.history[1:]):
        assert r["train_loss"] == pytest.approx(w["train_loss"], rel=0.03), (w, r)
