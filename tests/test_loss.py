"""ClipLoss against a naive float64 formula and a case worked by hand."""
import math

import numpy as np
import pytest
import torch

from clippo.loss import ClipLoss, clip_loss


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
