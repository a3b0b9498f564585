"""Model components checked against independent computations: relative-position attention against a
Python loop, attentive statistics pooling against plain statistics, encoders against extra padding, margin
losses against their formulas by hand, and every registry combination for two training steps."""

from __future__ import annotations

import itertools
import math

import pytest
import torch
import torch.nn.functional as F

from model import ModelConfig, build_model
from model.encoders import Conv2dSubsampling4, RelPositionMultiHeadAttention
from model.registry import ENCODERS, HEADS, LOSSES, POOLINGS

TINY = dict(d_model=16, nhead=2, ffn=32, n_classes=5, conformer_kernel=7, subsampling_channels=8,
            rel_pos_clip=8, pool_hidden=8, head_hidden=12)


def _lengths_mask(lengths, frames):
    return torch.arange(frames)[None, :] < torch.tensor(lengths)[:, None]


# --- relative-position attention --------------------------------------------------------------------------


def _naive_rel_attention(attn: RelPositionMultiHeadAttention, x, mask):
    """score[i, j] = q_i . (k_j + a[clip(j - i)]) / sqrt(dh) over real keys j, one scalar at a time."""
    batch, frames, d = x.shape
    heads, dh, clip = attn.nhead, attn.d_head, attn.clip
    w, b = attn.qkv.weight, attn.qkv.bias
    out = torch.zeros(batch, frames, d, dtype=torch.float64)
    for n in range(batch):
        qkv = x[n].double() @ w.double().t() + b.double()  # (T, 3d)
        for h in range(heads):
            q = qkv[:, h * dh:(h + 1) * dh]
            k = qkv[:, d + h * dh:d + (h + 1) * dh]
            v = qkv[:, 2 * d + h * dh:2 * d + (h + 1) * dh]
            for i in range(frames):
                scores, values = [], []
                for j in range(frames):
                    if not mask[n, j]:
                        continue
                    rel = attn.rel_key[max(-clip, min(clip, j - i)) + clip].double()
                    scores.append(float(q[i] @ (k[j] + rel)) / math.sqrt(dh))
                    values.append(v[j])
                top = max(scores)
                weights = [math.exp(s - top) for s in scores]
                total = sum(weights)
                out[n, i, h * dh:(h + 1) * dh] = sum(wt / total * val for wt, val in zip(weights, values))
    return (out.float() @ attn.out.weight.t() + attn.out.bias)


def test_relative_attention_equals_a_python_loop_of_its_formula():
    torch.manual_seed(0)
    attn = RelPositionMultiHeadAttention(d_model=8, nhead=2, dropout=0.0, clip=3).eval()
    x = torch.randn(2, 9, 8)
    mask = _lengths_mask([9, 5], 9)  # second utterance padded: its padded queries still see real keys
    with torch.no_grad():
        got = attn(x, mask)
        want = _naive_rel_attention(attn, x, mask)
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)
    assert torch.isfinite(got).all()


def test_relative_attention_depends_on_relative_positions():
    """The relative table matters (the check above would pass for a table of zeros, too)."""
    torch.manual_seed(1)
    attn = RelPositionMultiHeadAttention(d_model=8, nhead=2, dropout=0.0, clip=3).eval()
    x, mask = torch.randn(1, 9, 8), torch.ones(1, 9, dtype=torch.bool)
    with torch.no_grad():
        before = attn(x, mask)
        attn.rel_key[0] += 5.0  # distance -3 or less
        after = attn(x, mask)
    assert not torch.allclose(before, after)


# --- poolings (padding: tests/test_registry.py, for every registered pooling) --------------------------


def test_asp_output_is_a_weighted_mean_and_std():
    """With a scorer that outputs 0 everywhere, ASP is the plain mean and (biased) std of real frames."""
    torch.manual_seed(3)
    pool = POOLINGS.build("asp", ModelConfig(**TINY), 4)
    with torch.no_grad():
        pool.score[-1].weight.zero_()
        pool.score[-1].bias.zero_()
        x = torch.randn(1, 6, 4)
        got = pool(x, torch.ones(1, 6, dtype=torch.bool))
    mean = x[0].mean(0)
    std = torch.sqrt(x[0].var(0, unbiased=False) + pool.EPS)
    torch.testing.assert_close(got[0], torch.cat([mean, std]), rtol=1e-5, atol=1e-6)


# --- encoders: extra padding changes nothing ---------------------------------------------------------------


def _pad(x, extra):
    batch, frames, bins = x.shape
    x_pad = torch.cat([x, torch.full((batch, extra, bins), -20.0)], 1)
    mask = torch.ones(batch, frames, dtype=torch.bool)
    return mask, x_pad, torch.cat([mask, torch.zeros(batch, extra, dtype=torch.bool)], 1)


ENCODER_VARIANTS = [dict(encoder="transformer"), dict(encoder="transformer", norm_first=True),
                    dict(encoder="conformer"), dict(encoder="conformer", subsampling=True)]


@pytest.mark.parametrize("variant", ENCODER_VARIANTS, ids=lambda v: "-".join(map(str, v.values())))
@pytest.mark.parametrize("pooling", ["mean", "sap", "asp"])
def test_model_logits_unchanged_by_extra_padding(variant, pooling):
    torch.manual_seed(4)
    model = build_model(ModelConfig(**{**TINY, "layers": 2, "pooling": pooling, **variant})).eval()
    x = torch.randn(3, 41, 40)
    mask, x_pad, mask_pad = _pad(x, 23)
    with torch.no_grad():
        torch.testing.assert_close(model(x_pad, mask_pad), model(x, mask), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("subsampling", [False, True])
def test_conformer_mixed_lengths_equal_each_alone(subsampling):
    """Real frames of every utterance in a padded batch equal the utterance encoded alone."""
    torch.manual_seed(5)
    encoder = ENCODERS.build("conformer", ModelConfig(**{**TINY, "layers": 2, "subsampling": subsampling})).eval()
    lengths = [30, 17, 9, 8]
    utterances = [torch.randn(n, 16) for n in lengths]
    x = torch.full((4, 30, 16), 7.0)  # padding far from the data, to be seen if it leaks
    for i, u in enumerate(utterances):
        x[i, :len(u)] = u
    with torch.no_grad():
        h, mask = encoder(x, _lengths_mask(lengths, 30))
        for i, u in enumerate(utterances):
            alone, alone_mask = encoder(u[None], torch.ones(1, len(u), dtype=torch.bool))
            n = int(alone_mask.sum())
            assert alone_mask.all() and int(mask[i].sum()) == n
            assert mask[i, :n].all()  # real frames first
            torch.testing.assert_close(h[i, :n], alone[0], rtol=1e-5, atol=1e-5)
            assert (h[i, n:] == 0).all()


def test_subsampling_lengths_are_exact():
    """Output frame t of a 3-wide stride-2 convolution reads 2t..2t+2: it is real iff those are real."""
    sub = Conv2dSubsampling4(16, 4, 0.0)
    for length in range(1, 40):
        once = max(0, (length - 3) // 2 + 1) if length >= 3 else 0
        twice = max(0, (once - 3) // 2 + 1) if once >= 3 else 0
        assert int(sub.output_length(torch.tensor(length))) == twice
        x = torch.randn(1, length, 16)
        h, mask = sub(x, torch.ones(1, length, dtype=torch.bool))
        assert int(mask.sum()) == twice and h.shape[1] == max(twice, 1)


def test_conformer_with_subsampling_has_no_nan_for_utterances_too_short_to_keep():
    torch.manual_seed(6)
    model = build_model(ModelConfig(**{**TINY, "encoder": "conformer", "subsampling": True, "pooling": "asp"}))
    x = torch.randn(2, 12, 40)
    mask = _lengths_mask([12, 5], 12)  # 5 frames give no real frame after 4x subsampling
    loss, logits = model.loss(x, mask, torch.tensor([0, 1]))
    loss.backward()
    assert torch.isfinite(logits).all() and torch.isfinite(loss)
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)


# --- margin losses against their formulas ----------------------------------------------------------------


def _hand_cosines(emb, weight):
    cos = torch.zeros(emb.shape[0], weight.shape[0], dtype=torch.float64)
    for i, e in enumerate(emb.double()):
        for j, w in enumerate(weight.double()):
            cos[i, j] = float(e @ w) / (float(e.norm()) * float(w.norm()))
    return cos


def _hand_loss(cos, labels, target_logit, scale):
    total = 0.0
    for i, y in enumerate(labels.tolist()):
        logits = [scale * (target_logit(float(c)) if j == y else float(c)) for j, c in enumerate(cos[i])]
        total += -logits[y] + math.log(sum(math.exp(z) for z in logits))
    return total / len(labels)


def _arcface(c, m):
    theta = math.acos(c)
    return math.cos(theta + m) if theta + m <= math.pi else c - m * math.sin(m)


@pytest.mark.parametrize("name", ["am", "aam"])
@pytest.mark.parametrize("margin_scale", [0.0, 0.5, 1.0])
def test_margin_loss_equals_its_formula(name, margin_scale):
    torch.manual_seed(7)
    cfg = ModelConfig(n_classes=4, loss=name, margin=0.3, scale=12.0)
    head = LOSSES.build(name, cfg, 6)
    emb = torch.randn(3, 6) * 4.0  # not unit length: the loss must normalise it
    labels = torch.tensor([2, 0, 3])
    loss, logits = head.loss(emb, labels, margin_scale)
    cos = _hand_cosines(emb, head.weight.detach())
    m = cfg.margin * margin_scale
    target = (lambda c: c - m) if name == "am" else (lambda c: _arcface(c, m))
    assert loss.item() == pytest.approx(_hand_loss(cos, labels, target, cfg.scale), rel=1e-5)
    # prediction logits (and the logits loss() returns) are s * cos(theta), without margin
    torch.testing.assert_close(head(emb).double(), cfg.scale * cos, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(logits.double(), cfg.scale * cos, rtol=1e-5, atol=1e-5)
    if margin_scale == 0.0:  # no margin: plain cross-entropy on scaled cosines
        plain = F.cross_entropy(cfg.scale * cos, labels).item()
        assert loss.item() == pytest.approx(plain, rel=1e-5)


def test_arcface_target_logit_falls_with_the_angle_past_pi_minus_m():
    head = LOSSES.build("aam", ModelConfig(n_classes=4, loss="aam", margin=0.4), 6)
    cos = torch.cos(torch.linspace(0.01, math.pi - 0.01, 500))
    target = head.target_logit(cos, 0.4)
    assert (target[1:] < target[:-1]).all()
    assert (target <= cos).all()


def test_margin_loss_is_computed_in_float32_under_autocast():
    head = LOSSES.build("aam", ModelConfig(n_classes=4, loss="aam"), 6)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss, logits = head.loss(torch.randn(3, 6).bfloat16(), torch.tensor([0, 1, 2]), 1.0)
        assert head.cosine(torch.randn(3, 6)).dtype == torch.float32
    assert loss.dtype == torch.float32 and logits.dtype == torch.float32


# --- every combination builds and trains ------------------------------------------------------------------


def _combinations():
    encoders = []
    for name in ENCODERS.names():
        encoders += [dict(encoder=name, subsampling=s) for s in (False, True)] if name == "conformer" else [
            dict(encoder=name)]
    for enc, pooling, loss, head in itertools.product(encoders, POOLINGS.names(), LOSSES.names(), HEADS.names()):
        yield pytest.param(dict(**enc, pooling=pooling, loss=loss, head=head),
                           id="-".join(str(v) for v in (*enc.values(), pooling, loss, head)))


@pytest.mark.parametrize("choice", list(_combinations()))
def test_every_combination_trains_two_steps(choice):
    torch.manual_seed(8)
    cfg = ModelConfig(**TINY, **choice, time_masks=2, time_mask_width=5, freq_masks=2, freq_mask_width=4)
    model = build_model(cfg).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.0)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    x = torch.randn(4, 40, 40)
    mask = _lengths_mask([40, 33, 25, 38], 40)
    x[~mask] = -20.0
    labels = torch.tensor([0, 1, 4, 1])
    for margin_scale in (0.5, 1.0):
        loss, logits = model.loss(x, mask, labels, margin_scale)
        assert torch.isfinite(loss) and logits.shape == (4, 5) and torch.isfinite(logits).all()
        optimizer.zero_grad()
        loss.backward()
        for name, p in model.named_parameters():
            assert p.grad is not None and torch.isfinite(p.grad).all(), name
        optimizer.step()
    unchanged = [n for n, p in model.named_parameters() if torch.equal(p.detach(), before[n])]
    assert not unchanged
    model.eval()
    with torch.no_grad():
        assert model(x, mask).shape == (4, 5)
