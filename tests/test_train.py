"""The trainer and full-length evaluation on the tiny dataset."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch

import search.training.train as train_module
from model import ModelConfig, build_model
from search.errors import TrainingDiverged
from search.running.task import load_task
from search.training import evaluation
from search.training.train import CollapseGuard, TrainConfig, TrainStep, evaluate, predict, train


def test_batched_full_length_prediction_equals_one_at_a_time(tiny_dataset):
    task = load_task(tiny_dataset, seed=0, device=torch.device("cpu"))
    cfg = ModelConfig(n_classes=task.bank.n_speakers)
    result = train(cfg, TrainConfig(steps=20, eval_every=20, warmup_steps=2), task)
    ids = torch.cat([task.valid_ids, task.bank.test_ids()])
    batched = predict(result.model, task.bank, ids, max_frames=4096)  # several batches, mixed lengths
    alone = torch.cat([predict(result.model, task.bank, ids[i:i + 1]) for i in range(len(ids))])
    assert torch.equal(batched, alone)


def _evaluate_per_batch(model, bank, ids, max_frames):
    """The evaluation before EvalBatches, kept as the reference: utterances sorted by length, longest first,
    each batch padded to its own longest utterance (read back from the device, a sync per batch), the
    correct count read back per batch. Returns (accuracy, logits in the order of ``ids``)."""
    host_ids, lengths = ids.cpu(), bank.lengths.cpu()[ids.cpu()]
    order = torch.argsort(lengths, descending=True, stable=True)
    logits, correct, start = torch.empty(len(ids), bank.n_speakers), 0, 0
    model.eval()
    with torch.no_grad():
        while start < len(order):
            size = max(1, max_frames // int(lengths[order[start]]))
            slots = order[start:start + size]
            batch = host_ids[slots]
            longest = int(bank.lengths[batch].max())
            x, mask = bank.gather(batch, torch.zeros_like(batch), longest)
            out = model(x, mask)
            correct += int((out.argmax(-1) == bank.labels[batch]).sum())
            logits[slots] = out
            start += size
    model.train()
    return correct / len(ids), logits


@pytest.mark.parametrize("encoder, pooling, extra", [
    ("transformer", "mean", {}), ("conformer", "asp", {"subsampling": True})])
def test_bucketed_evaluation_gives_the_per_batch_evaluations_accuracy(tiny_dataset, encoder, pooling, extra):
    """Length buckets pad more (to fixed shapes) and read nothing back per batch: the same logits up to
    float noise, the same predictions and accuracy (30 utterances of the tiny set, all lengths)."""
    task = load_task(tiny_dataset, seed=0, device=torch.device("cpu"))
    cfg = ModelConfig(n_classes=task.bank.n_speakers, encoder=encoder, pooling=pooling, d_model=32, nhead=2, ffn=64,
                      **extra)
    model = train(cfg, TrainConfig(steps=30, eval_every=30, warmup_steps=3, batch_size=16, lr=3e-3), task).model
    ids = torch.cat([task.train_ids[::3], task.valid_ids])
    for max_frames in (1 << 15, 1500):  # two batches; then five, all of other shapes
        before, reference = _evaluate_per_batch(model, task.bank, ids, max_frames)
        plan = train_module.EvalBatches(task.bank, ids, max_frames)
        assert len(plan.batches) == {1 << 15: 2, 1500: 5}[max_frames]
        assert len(plan.batches[-1][0]) > plan.batches[-1][2]  # the last batch filled up with copies
        assert plan.accuracy(model) == before
        with torch.no_grad():
            logits = torch.empty_like(reference)
            for slots, out in plan.logits(model):
                logits[slots] = out
        torch.testing.assert_close(logits, reference, rtol=1e-4, atol=1e-4)
        assert torch.equal(logits.argmax(-1), reference.argmax(-1))
        assert 0.0 < before < 1.0  # neither trivial: the comparison counts


def test_evaluation_batches_have_few_fixed_shapes_and_cover_each_utterance_once(tiny_dataset):
    task = load_task(tiny_dataset, seed=0, device=torch.device("cpu"))
    ids = torch.cat([task.train_ids, task.valid_ids, task.bank.test_ids()])
    plan = train_module.EvalBatches(task.bank, ids, max_frames=4096)
    slots = torch.cat([s for _, s, _, _, _ in plan.batches])
    assert sorted(slots.tolist()) == list(range(len(ids)))
    for batch, slot, n, padded, _ in plan.batches:
        rows = len(batch)
        assert padded == train_module.bucket_length(padded)  # a bucket's own length
        assert int(task.bank.lengths[ids[slot]].max()) <= padded < 1.125 * int(task.bank.lengths[ids[slot]].max()) + 8
        size = evaluation.batch_size(padded, 4096)
        assert rows == size or (rows == 1 << (n - 1).bit_length() and rows < size)
        assert torch.equal(batch[:n], ids[slot])
    # the bucket lengths: 8 a doubling, multiples of 8
    lengths = [train_module.bucket_length(f) for f in range(1, 3000)]
    assert all(b % 8 == 0 and b >= f for f, b in zip(range(1, 3000), lengths))
    assert len(set(b for b in lengths if 512 < b <= 1024)) == 8


def test_long_utterances_are_evaluated_in_batches_of_bounded_attention(tiny_dataset):
    """Past ``attention_length`` frames a batch holds fewer utterances, so that batch x length^2 (each head's
    attention scores) stays within max_frames x attention_length: HW04's longest validation utterances ran
    configurations out of GPU memory at full max_frames batches. Same predictions as before, one at a time."""
    task = load_task(tiny_dataset, seed=0, device=torch.device("cpu"))
    cfg = ModelConfig(n_classes=task.bank.n_speakers, encoder="transformer", pooling="mean", d_model=32, nhead=2,
                      ffn=64)
    model = build_model(cfg)
    ids = torch.cat([task.train_ids, task.valid_ids])
    max_frames, attention_length = 1 << 14, 128  # the tiny set's utterances are mostly longer than 128 frames
    bounded = train_module.EvalBatches(task.bank, ids, max_frames, attention_length)
    unbounded = train_module.EvalBatches(task.bank, ids, max_frames, attention_length=max_frames)
    assert len(bounded.batches) > len(unbounded.batches)  # the bound split some batches
    for batch, _, _, padded, _ in bounded.batches:
        assert len(batch) == 1 or len(batch) * padded**2 <= max_frames * attention_length
    assert any(len(batch) * padded**2 > max_frames * attention_length for batch, _, _, padded, _ in unbounded.batches)
    with torch.no_grad():
        alone = torch.cat([predict(model, task.bank, ids[i:i + 1]) for i in range(len(ids))])
        assert torch.equal(predict(model, task.bank, ids), alone)  # the default bound, as trials and finalize use it
        assert bounded.correct(model) == unbounded.correct(model) == int((alone == task.bank.labels[ids]).sum())


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU: run on the GPU machine")
def test_evaluation_reads_nothing_back_until_the_end(tiny_dataset):
    """CUDA's sync debug mode raises on any operation that makes the host wait for the device: counting
    the correct predictions of a whole evaluation must not do so once."""
    task = load_task(tiny_dataset, seed=0, device=torch.device("cuda"))
    model = build_model(ModelConfig(n_classes=task.bank.n_speakers)).cuda()
    plan = train_module.EvalBatches(task.bank, task.bank.test_ids(), max_frames=4096)
    plan.correct(model)  # warm-up: lazy initialisations may sync once
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        correct = plan.correct(model)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert 0 <= int(correct) <= len(task.bank.test_ids())


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU: run on the GPU machine")
def test_a_bank_kept_in_host_memory_still_trains_and_evaluates_on_the_gpu(tiny_dataset):
    """FeatureBank.to keeps the frames in pinned host memory when they do not fit on the GPU (a big dataset, or a
    card other workers have filled). Training and evaluation still run on the GPU: batches are gathered on the host
    and copied across. (The bank took its device from the frames: every trial failed at its first step.)"""
    from search.running.task import Task

    task = load_task(tiny_dataset, seed=0, device=torch.device("cuda"))
    on_host = replace(task.bank, frames=task.bank.frames.cpu().pin_memory())  # what FeatureBank.to falls back to
    task = Task(on_host, task.train_ids, task.valid_ids, task.seed, task.source)
    assert task.device.type == "cuda" and not on_host.frames.is_cuda
    cfg = TrainConfig(steps=30, eval_every=15, warmup_steps=5, batch_size=8)
    result = train(ModelConfig(n_classes=on_host.n_speakers, head="linear"), cfg, task)
    assert len(result.history) == 2 and next(result.model.parameters()).is_cuda
    assert 0.0 <= evaluate(result.model, on_host, task.valid_ids) <= 1.0


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


# --- gradient clipping ----------------------------------------------------------------------------------

def _one_step_gradients(task, grad_clip: float) -> tuple[list[torch.Tensor], float]:
    """The gradients a TrainStep leaves after one step on a fixed batch (dropout off, seeded init), and the
    pre-clip global norm it measured (0 when clipping is off)."""
    torch.manual_seed(0)
    model_cfg = ModelConfig(n_classes=task.bank.n_speakers, dropout=0.0)
    model = build_model(model_cfg)
    step = TrainStep(model, TrainConfig(grad_clip=grad_clip), torch.device("cpu"))
    generator = torch.Generator().manual_seed(0)
    ids = task.train_ids[:16]
    x, mask = task.bank.random_crops(ids, 64, generator)  # x (16, 64, 40), mask (16, 64)
    step(x, mask, task.bank.labels[ids])
    return [p.grad.clone() for p in model.parameters()], float(step.grad_norm_sum)


def test_clipping_bounds_the_gradient_norm_and_keeps_its_direction(tiny_dataset):
    task = load_task(tiny_dataset, seed=0, device=torch.device("cpu"))
    raw, _ = _one_step_gradients(task, grad_clip=0.0)
    raw_norm = float(torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in raw])))
    clip = raw_norm / 4  # well below this step's norm, so the clip must act
    clipped, measured = _one_step_gradients(task, grad_clip=clip)
    norm = float(torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in clipped])))
    assert measured == pytest.approx(raw_norm, rel=1e-5)  # the norm it reports is the one before clipping
    assert norm <= clip * (1 + 1e-5)
    for g, r in zip(clipped, raw):  # the same direction, scaled by clip / norm
        torch.testing.assert_close(g, r * (clip / raw_norm), rtol=1e-4, atol=1e-7)


def test_history_reports_the_gradient_norm_and_the_share_of_steps_clipped(tiny_dataset):
    task = load_task(tiny_dataset, seed=0, device=torch.device("cpu"))
    model_cfg = ModelConfig(n_classes=task.bank.n_speakers)
    tight = train(model_cfg, TrainConfig(steps=20, eval_every=10, warmup_steps=2, grad_clip=1e-4), task)
    assert [h["clipped"] for h in tight.history] == [1.0, 1.0]  # every step's norm is above 1e-4
    assert all(h["grad_norm"] > 1e-4 for h in tight.history)
    loose = train(model_cfg, TrainConfig(steps=20, eval_every=10, warmup_steps=2, grad_clip=1e6), task)
    assert [h["clipped"] for h in loose.history] == [0.0, 0.0]


# --- collapse detection and rollback --------------------------------------------------------------------

SPIKE_AT, SPIKE_STEPS = 130, 5  # the fault: a learning rate 1,000x too high for steps 130-134 (evaluations: every 40)


def spiking_schedule(monkeypatch, factor: float = 1000.0) -> None:
    """Make the trainer's learning rate ``factor`` times too high for SPIKE_STEPS steps from SPIKE_AT, the first
    time training passes there only: an instability that strikes once (AdamW then moves every weight by ~lr per
    step, and the model is wrecked). The trainer itself runs unchanged."""
    real = train_module.lr_lambda
    struck: set[int] = set()

    def faulty(warmup: int, total: int):
        factor_of = real(warmup, total)

        def scaled(step: int) -> float:
            if SPIKE_AT <= step < SPIKE_AT + SPIKE_STEPS and step not in struck:
                struck.add(step)
                return factor_of(step) * factor
            return factor_of(step)

        return scaled

    monkeypatch.setattr(train_module, "lr_lambda", faulty)


def collapse_setup(four_speakers, device: str = "cpu"):
    task = load_task(four_speakers, seed=0, device=torch.device(device))
    model_cfg = ModelConfig(n_classes=task.bank.n_speakers, d_model=64, nhead=2, ffn=128, pooling="asp",
                            head="linear", dropout=0.0)
    cfg = TrainConfig(steps=240, eval_every=40, warmup_steps=20, batch_size=16, lr=3e-3, seed=1,
                      recover_collapse=True)
    return task, model_cfg, cfg


def test_a_collapse_is_rolled_back_at_a_lower_lr_and_training_ends_with_a_good_model(four_speakers, monkeypatch):
    task, model_cfg, cfg = collapse_setup(four_speakers)
    healthy = train(model_cfg, cfg, task)
    assert healthy.rollbacks == []  # no fault, no rollback: the guard does not fire on an ordinary run

    spiking_schedule(monkeypatch)
    with pytest.raises(TrainingDiverged):  # without the guard: the weights overflow, the run is lost
        train(model_cfg, replace(cfg, recover_collapse=False), task)

    spiking_schedule(monkeypatch)
    seen = []
    result = train(model_cfg, cfg, task, on_eval=lambda step, m: seen.append((step, m.get("rollback"))))
    [rollback] = result.rollbacks
    assert rollback["step"] == 160 and rollback["to_step"] == 120  # back to the last evaluation before the spike
    assert rollback["lr"] == pytest.approx(cfg.lr / 2)
    assert rollback["reason"] == "training loss nan"
    assert (160, rollback) in seen  # the caller is told, at the evaluation that found the collapse
    steps = [h["step"] for h in result.history]
    assert steps == [40, 80, 120, 160, 160, 200, 240]  # steps 121-160 ran again after the rollback, at lr / 2
    before = healthy.history[2]  # step 120, the state rolled back to (identical in both runs)
    assert result.history[2] == {**before, "elapsed": result.history[2]["elapsed"],
                                 "steps_per_second": result.history[2]["steps_per_second"]}
    # It went on learning from there: a lower loss and at least as good a validation accuracy as at step 120,
    # where the run without the guard died, and a returned model that knows its training utterances.
    assert result.history[-1]["train_loss"] < before["train_loss"]
    assert result.history[-1]["valid_accuracy"] >= before["valid_accuracy"]
    assert evaluate(result.model, task.bank, task.train_ids) >= 0.6  # 4 speakers: chance is 0.25


def test_a_resumed_run_rolls_back_and_ends_like_the_uninterrupted_one(four_speakers, monkeypatch, tmp_path):
    """The rollback's lowered lr and record live in the checkpoint: a finalize killed after a rollback resumes
    at the lowered lr and ends with the same weights and history as a run that was never stopped."""
    task, model_cfg, cfg = collapse_setup(four_speakers)
    spiking_schedule(monkeypatch)
    whole = train(model_cfg, cfg, task)

    class Stop(Exception):
        pass

    def stop_at_200(step, metrics):
        if step == 200:  # after the rollback at 160 and the second pass through the spike's steps
            raise Stop

    checkpoint = tmp_path / "ckpt.pt"
    spiking_schedule(monkeypatch)
    with pytest.raises(Stop):
        train(model_cfg, cfg, task, on_eval=stop_at_200, checkpoint=checkpoint, checkpoint_every=30)
    resumed = train(model_cfg, cfg, task, checkpoint=checkpoint, checkpoint_every=30)
    assert resumed.rollbacks == whole.rollbacks and len(whole.rollbacks) == 1
    losses = [h["train_loss"] for h in whole.history]  # one is nan: the collapse at step 160
    assert [h["train_loss"] for h in resumed.history] == pytest.approx(losses, rel=0, abs=0, nan_ok=True)
    for (name, p), q in zip(whole.model.state_dict().items(), resumed.model.state_dict().values()):
        assert torch.equal(p, q), name


def guard(n_valid: int = 1000, margin_loss: bool = False) -> CollapseGuard:
    return CollapseGuard(TrainConfig(steps=70_000, margin_warmup=0.2), margin_loss=margin_loss, n_valid=n_valid)


def run_guard(g: CollapseGuard, evaluations) -> list[str]:
    """Feed (window start, train loss, valid accuracy) evaluations as the trainer would: a good one is kept."""
    verdicts, best = [], -1.0
    for start, loss, accuracy in evaluations:
        verdict = g.check(start, loss, accuracy, best)
        verdicts.append(verdict if verdict in ("ok", "suspect") else "collapse")
        if verdict == "ok":
            g.keep(start + 2000, start, loss, {}, [])
        best = max(best, accuracy) if verdict in ("ok", "suspect") else best
    return verdicts


def test_guard_ignores_noise_and_needs_two_low_accuracies_in_a_row():
    noisy = [(i * 2000, 1.5 * (0.97 ** i) * (1.1 if i % 2 else 0.9), 0.5 + 0.01 * i) for i in range(30)]
    assert set(run_guard(guard(), noisy)) == {"ok"}
    once = [(0, 2.0, 0.6), (2000, 1.5, 0.7), (4000, 1.4, 0.3), (6000, 1.3, 0.72)]
    assert run_guard(guard(), once) == ["ok", "ok", "suspect", "ok"]
    twice = [(0, 2.0, 0.6), (2000, 1.5, 0.7), (4000, 1.4, 0.3), (6000, 1.4, 0.2)]
    assert run_guard(guard(), twice) == ["ok", "ok", "suspect", "collapse"]
    # 6 validation utterances: 0.5 -> 0.17 twice is two utterances, within noise (3 standard errors = 0.61)
    assert "collapse" not in run_guard(guard(n_valid=6), [(0, 2.0, 0.5), (2000, 1.9, 0.17), (4000, 1.8, 0.17)])


def test_guard_fires_on_a_loss_jump_and_a_nan_but_not_on_a_margin_ramp_or_a_tiny_loss():
    assert run_guard(guard(), [(0, 2.0, 0.5), (2000, 1.0, 0.6), (4000, 3.5, 0.55)]) == ["ok", "ok", "collapse"]
    assert run_guard(guard(), [(0, 2.0, 0.5), (2000, float("nan"), 0.6)]) == ["ok", "collapse"]
    assert set(run_guard(guard(), [(0, 0.02, 0.9), (2000, 0.01, 0.9), (4000, 0.04, 0.9)])) == {"ok"}
    ramp = [(0, 0.5, 0.5), (2000, 1.0, 0.6), (4000, 4.0, 0.7), (16000, 5.0, 0.8)]  # the margin grows to step 14,000
    assert set(run_guard(guard(margin_loss=True), ramp)) == {"ok"}
    after = ramp + [(18000, 4.0, 0.8), (20000, 16.0, 0.8)]  # a jump after the ramp still counts
    assert run_guard(guard(margin_loss=True), after)[-1] == "collapse"


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU: run on the GPU machine")
def test_cuda_graph_rolls_back_in_place_and_trains_on_like_eager_steps(four_speakers, monkeypatch):
    """The captured graph reads the parameters, AdamW's state and the lr tensor in place: the rollback copies the
    last good state into those very tensors, so the replayed graph trains on from it. (Had it swapped in new
    tensors, as optimizer.load_state_dict does, the graph would keep updating the wrecked ones.)"""
    task, model_cfg, cfg = collapse_setup(four_speakers, "cuda")
    spiking_schedule(monkeypatch)
    graphed = train(model_cfg, cfg, task)
    spiking_schedule(monkeypatch)
    eager = train(model_cfg, replace(cfg, cuda_graph=False), task)
    assert graphed.cuda_graph and not eager.cuda_graph
    for result in (graphed, eager):
        assert [(r["step"], r["to_step"]) for r in result.rollbacks] == [(160, 120)]
        assert result.rollbacks[0]["lr"] == pytest.approx(cfg.lr / 2)
        assert result.history[-1]["train_loss"] < result.history[2]["train_loss"]  # learning on from step 120
    for g, e in zip(graphed.history[4:], eager.history[4:]):  # after the rollback: the same training
        assert g["train_loss"] == pytest.approx(e["train_loss"], rel=0.05), (g, e)
