"""ClipLoss and SigLipLoss against naive float64 formulas and cases worked by hand."""
import math

import numpy as np
import pytest
import torch

from clippo.loss import ClipLoss, SigLipLoss, clip_loss, create_loss, siglip_loss


def naive_loss(zimg, ztxt, scale):
    """Loops over rows and columns: -log softmax of the matching pair, averaged both ways."""
    b = len(zimg)
    s = [[scale * sum(zimg[i][k] * ztxt[j][k] for k in range(len(zimg[i]))) for j in range(b)]
         for i in range(b)]
    rows = [-(s[i][i] - math.log(sum(math.exp(s[i][j]) for j in range(b)))) for i in range(b)]
    cols = [-(s[j][j] - math.log(sum(math.exp(s[i][j]) for i in range(b)))) for j in range(b)]
    return (sum(rows) / b + sum(cols) / b) / 2


def test_hand_computed_case():
    # zimg = ztxt = I: logits [[s, 0], [0, s]], each CE = log(1 + e^-s); with s = 1 and 2.
    z = torch.eye(2)
    assert clip_loss(z, z, torch.tensor(1.0)).item() == pytest.approx(math.log(1 + math.exp(-1)))
    assert clip_loss(z, z, 2.0).item() == pytest.approx(0.126928011, rel=1e-6)
    # Asymmetric: ztxt rows swapped -> every pair is the worst match: CE = log(1 + e^s).
    assert clip_loss(z, z.flip(0), 1.0).item() == pytest.approx(math.log(1 + math.e))


def test_asymmetric_directions_are_averaged():
    # 3 pairs where img->txt and txt->img differ; checks both directions against the loops.
    zimg = torch.tensor([[1.0, 0.0], [0.6, 0.8], [0.0, 1.0]])
    ztxt = torch.tensor([[0.6, 0.8], [0.8, 0.6], [1.0, 0.0]])
    loss, parts = clip_loss(zimg, ztxt, 3.0, return_parts=True)
    assert abs(parts["img2txt"].item() - parts["txt2img"].item()) > 0.05
    torch.testing.assert_close(loss, (parts["img2txt"] + parts["txt2img"]) / 2)
    assert loss.item() == pytest.approx(naive_loss(zimg.tolist(), ztxt.tolist(), 3.0), rel=1e-6)


@pytest.mark.parametrize("b, d", [(1, 4), (5, 8), (16, 3)])
def test_matches_naive_formula(b, d):
    rng = np.random.default_rng(b)
    zi, zt = rng.normal(size=(b, d)), rng.normal(size=(b, d))
    zi /= np.linalg.norm(zi, axis=1, keepdims=True)
    zt /= np.linalg.norm(zt, axis=1, keepdims=True)
    scale = torch.tensor(math.exp(math.log(10.0) + 0.3))
    got = ClipLoss()(torch.from_numpy(zi), torch.from_numpy(zt), scale)
    assert got.item() == pytest.approx(naive_loss(zi.tolist(), zt.tolist(), scale.item()),
                                       rel=1e-10)
    got32 = ClipLoss()(torch.from_numpy(zi).float(), torch.from_numpy(zt).float(), scale)
    assert got32.item() == pytest.approx(got.item(), rel=1e-5)


def test_gradient_reaches_temperature_and_embeddings():
    t = torch.tensor([math.log(10.0)], requires_grad=True)
    zi = torch.randn(4, 6, dtype=torch.float64, requires_grad=True)
    zt = torch.randn(4, 6, dtype=torch.float64, requires_grad=True)
    torch.autograd.gradcheck(lambda a, b, c: clip_loss(a, b, c.exp()), (zi, zt, t.double()))
    out = ClipLoss()(zi, zt, t.exp(), output_dict=True)
    out["contrastive_loss"].backward()
    assert t.grad is not None and zi.grad is not None and zt.grad is not None


def test_logits_and_labels():
    zi, zt = torch.randn(3, 4), torch.randn(3, 4)
    li, lt = ClipLoss().get_logits(zi, zt, 2.0)
    torch.testing.assert_close(li, 2.0 * zi @ zt.T)
    torch.testing.assert_close(lt, li.T)
    assert ClipLoss().get_ground_truth(3).tolist() == [0, 1, 2]


@pytest.mark.parametrize("a, b, s", [((3, 4), (2, 4), 1.0), ((3, 4), (3, 5), 1.0),
                                     ((3,), (3,), 1.0), ((0, 4), (0, 4), 1.0),
                                     ((3, 4), (3, 4), torch.ones(2))])
def test_bad_shapes_raise(a, b, s):
    with pytest.raises(ValueError):
        clip_loss(torch.zeros(a), torch.zeros(b), s)


def naive_sigmoid_loss(zimg, ztxt, scale, bias):
    """-1/B sum_ij log sigmoid(y_ij (scale zi.zj + bias)), y = +1 on the diagonal, else -1."""
    b = len(zimg)
    total = 0.0
    for i in range(b):
        for j in range(b):
            s = scale * sum(p * q for p, q in zip(zimg[i], ztxt[j])) + bias
            y = 1.0 if i == j else -1.0
            total += -math.log(1.0 / (1.0 + math.exp(-y * s)))
    return total / b


def test_sigmoid_hand_computed_case():
    # zimg = ztxt = I (2 pairs): logits [[s+b, b], [b, s+b]]:
    # loss = -(2 log sig(s+b) + 2 log sig(-b)) / 2
    z = torch.eye(2, dtype=torch.float64)
    s, b = 10.0, -10.0
    want = -(math.log(1 / (1 + math.exp(-(s + b)))) + math.log(1 / (1 + math.exp(b))))
    assert want == pytest.approx(math.log(2) + math.log(1 + math.exp(-10)))
    got = SigLipLoss()(z, z, torch.tensor(s, dtype=torch.float64))
    assert got.item() == pytest.approx(want, rel=1e-12)


@pytest.mark.parametrize("b, d, bias", [(1, 4, -10.0), (6, 8, -3.0), (16, 3, 0.5)])
def test_sigmoid_matches_naive_formula(b, d, bias):
    rng = np.random.default_rng(100 + b)
    zi, zt = rng.normal(size=(b, d)), rng.normal(size=(b, d))
    zi /= np.linalg.norm(zi, axis=1, keepdims=True)
    zt /= np.linalg.norm(zt, axis=1, keepdims=True)
    scale = math.exp(math.log(10.0) - 0.2)
    loss = SigLipLoss(init_logit_bias=bias).double()
    got = loss(torch.from_numpy(zi), torch.from_numpy(zt), torch.tensor(scale, dtype=torch.float64))
    want = naive_sigmoid_loss(zi.tolist(), zt.tolist(), scale, bias)
    assert got.item() == pytest.approx(want, rel=1e-12)
    assert siglip_loss(torch.from_numpy(zi), torch.from_numpy(zt), scale, bias).item() == \
        pytest.approx(want, rel=1e-12)


def test_sigmoid_bias_is_learned_and_gradients_flow():
    loss = SigLipLoss()
    assert isinstance(loss.logit_bias, torch.nn.Parameter) and loss.logit_bias.item() == -10.0
    assert [n for n, _ in loss.named_parameters()] == ["logit_bias"]
    t = torch.tensor([math.log(10.0)], dtype=torch.float64, requires_grad=True)
    zi = torch.randn(5, 6, dtype=torch.float64, requires_grad=True)
    zt = torch.randn(5, 6, dtype=torch.float64, requires_grad=True)
    bias = torch.tensor(-2.0, dtype=torch.float64, requires_grad=True)
    torch.autograd.gradcheck(lambda a, b, c, d: siglip_loss(a, b, c.exp(), d), (zi, zt, t, bias))
    loss.double()(zi, zt, t.exp()).backward()
    # d loss / d bias = -1/B sum_ij y_ij (1 - sigmoid(y_ij l_ij)), by hand from the logits
    with torch.no_grad():
        logits = t.exp() * zi @ zt.T + loss.logit_bias
        y = 2 * torch.eye(5, dtype=torch.float64) - 1
        want = -(y * (1 - torch.sigmoid(y * logits))).sum() / 5
    torch.testing.assert_close(loss.logit_bias.grad, want)
    assert t.grad is not None


def test_half_precision_losses_use_float32_logits():
    zi, zt = torch.randn(8, 16), torch.randn(8, 16)
    zi, zt = zi / zi.norm(dim=1, keepdim=True), zt / zt.norm(dim=1, keepdim=True)
    for loss in (ClipLoss(), SigLipLoss()):
        ref = loss(zi, zt, 10.0)
        half = loss(zi.bfloat16(), zt.bfloat16(), 10.0)
        assert half.dtype == torch.float32
        assert half.item() == pytest.approx(ref.item(), rel=2e-2)


def test_create_loss_and_shared_call_signature():
    zi, zt = torch.randn(4, 3), torch.randn(4, 3)
    soft, sig = create_loss("softmax"), create_loss("sigmoid", init_logit_bias=-5.0)
    assert type(soft) is ClipLoss and type(sig) is SigLipLoss and sig.logit_bias.item() == -5.0
    # the trainer calls both the same way: loss_fn(zimg, ztxt, logit_scale)
    torch.testing.assert_close(soft(zi, zt, 2.0), clip_loss(zi, zt, 2.0))
    torch.testing.assert_close(sig(zi, zt, 2.0), siglip_loss(zi, zt, 2.0, -5.0))
    # a bias shared by every logit cancels in the softmax
    torch.testing.assert_close(soft(zi, zt, 2.0, logit_bias=torch.tensor(-3.0)),
                               clip_loss(zi, zt, 2.0))
    assert set(soft(zi, zt, 2.0, output_dict=True)) == {"contrastive_loss"}
    with pytest.raises(ValueError, match="unknown loss"):
        create_loss("hinge")


def test_world_size_without_process_group_raises():
    z = torch.randn(2, 3)
    with pytest.raises(RuntimeError, match="torch.distributed"):
        ClipLoss(world_size=2, rank=0)(z, z, 1.0)
    with pytest.raises(ValueError, match="rank"):
        SigLipLoss(world_size=1, rank=1)(z, z, 1.0)
    # explicit single-process values are the default behaviour
    torch.testing.assert_close(ClipLoss(rank=0, world_size=1)(z, z, 1.0), clip_loss(z, z, 1.0))


@pytest.mark.parametrize("loss", [ClipLoss(), SigLipLoss()])
def test_losses_reject_bad_shapes(loss):
    with pytest.raises(ValueError):
        loss(torch.zeros(3, 4), torch.zeros(2, 4), 1.0)
    with pytest.raises(ValueError):
        loss(torch.zeros(0, 4), torch.zeros(0, 4), 1.0)
