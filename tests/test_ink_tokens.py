"""Variable token sets: ink masks, the padded ViT path against unpadded per-image float64
references, the model's text_tokens setting (saved, loaded, followed by every text entry
point), the training step's keep masks and patch dropout."""
import json

import pytest
import torch

import clippo
from clippo.eval.interface import open_clip_interface
from clippo.kernels.patch_embed import patch_embed_ref
from clippo.loss import create_loss
from clippo.model.clippo import CLIPPO
from clippo.model.tokens import Packing, keep_index, pixel_ink, random_keep
from clippo.train.step import ContrastiveTask, forward_backward, render_batch

pytestmark = pytest.mark.filterwarnings("ignore:'set_vital' is deprecated")

TEXTS = ["a red circle on the left", "", "ein blauer Stern", "x",
         "a much longer caption that wraps over several lines of the page"]


def _model(text_tokens="all", dtype=torch.float32, seed=0, **kw):
    torch.manual_seed(seed)
    cfg = dict(image_size=64, width=32, depth=2, num_heads=2, mlp_dim=64, out_dim=16,
               patch_size=16)
    cfg.update(kw)
    return CLIPPO("Ti/16", text_tokens=text_tokens, **cfg).to(dtype).eval()


def _unit(z):
    return z / (z.norm(dim=-1, keepdim=True) + 1e-8)  # CLIPPO's normalisation (one_tower.py)


def _scan(images, p, background):
    """Patch by patch, as written: any pixel of the patch differs from the background."""
    b, _, h, w = images.shape
    out = torch.zeros(b, (h // p) * (w // p), dtype=torch.bool)
    for i in range(b):
        for r in range(h // p):
            for c in range(w // p):
                out[i, r * (w // p) + c] = bool(
                    (images[i, :, r * p:(r + 1) * p, c * p:(c + 1) * p] != background).any())
    return out


def test_pixel_ink_equals_a_patch_by_patch_scan_uint8_and_float():
    model = _model()
    images = model.renderer("cpu")(TEXTS)
    bg = model.render_config.background_brightness
    want = _scan(images, 16, bg)
    assert torch.equal(pixel_ink(images, 16, bg), want)
    assert torch.equal(pixel_ink(images.float() * (2 / 255) - 1, 16, bg), want)
    assert not want[1].any()  # the empty string has no ink
    assert want[0].any() and not want[0].all()
    assert torch.equal(pixel_ink(images, 8, bg), _scan(images, 8, bg))


def test_keep_index_orders_pads_and_gives_an_empty_row_one_token():
    keep = torch.tensor([[0, 1, 0, 1, 1], [0, 0, 0, 0, 0], [1, 1, 1, 1, 1]], dtype=torch.bool)
    index, lengths = keep_index(keep)
    assert index.tolist() == [[1, 3, 4, -1, -1], [0, -1, -1, -1, -1], [0, 1, 2, 3, 4]]
    assert lengths.tolist() == [3, 1, 5]
    index, lengths = keep_index(keep[:2])
    assert index.tolist() == [[1, 3, 4], [0, -1, -1]] and lengths.tolist() == [3, 1]
    with pytest.raises(ValueError, match="bool mask"):
        keep_index(keep.long())


def test_packing_round_trip_by_hand_and_its_gradients():
    lengths = torch.tensor([2, 1, 3])
    packing = Packing(lengths, 3)
    x = torch.arange(9.0).view(3, 3, 1)  # rows [0 1 2], [3 4 5], [6 7 8]
    assert packing.tokens == 6
    assert packing.pack(x)[:, 0].tolist() == [0, 1, 3, 6, 7, 8]
    back = packing.unpack(packing.pack(x))
    assert back[..., 0].tolist() == [[0, 1, 0], [3, 0, 0], [6, 7, 8]]  # zeros in the padding
    t = torch.randn(6, 4, dtype=torch.float64, requires_grad=True)
    torch.autograd.gradcheck(lambda t: packing.pack(packing.unpack(t) * 2), (t,))
    with pytest.raises(ValueError, match="packed tokens"):
        packing.unpack(torch.zeros(5, 4))
    with pytest.raises(ValueError, match=r"\[3, 3, \.\.\.\]"):
        packing.pack(torch.zeros(3, 4, 1))


def test_unpack_for_attention_gathers_the_kept_slots_gradients():
    """unpack(zeros=False), attention's padded batch: the padding repeats a kept token and
    its gradient is dropped (attention gives it none); each token gets its own slot's."""
    packing = Packing(torch.tensor([2, 1, 3]), 3)
    t = torch.arange(6.0).view(6, 1).requires_grad_()
    padded = packing.unpack(t, zeros=False)
    assert padded[..., 0].tolist()[0][:2] == [0, 1] and padded[1, 0, 0] == 2
    assert set(padded[1, 1:, 0].tolist() + padded[0, 2:, 0].tolist()) <= set(range(6))
    grad = torch.arange(1.0, 10.0).view(3, 3, 1)  # slots numbered 1..9, padding 3, 5, 6
    padded.backward(grad)
    assert t.grad[:, 0].tolist() == [1, 2, 4, 7, 8, 9]


def test_ragged_batch_gemms_see_only_the_kept_tokens(monkeypatch):
    """The speed of ink tokens: every Dense layer of the blocks runs on sum(lengths) rows,
    not on rows x the longest length (a padded batch would pass B * L rows)."""
    from clippo import kernels
    model = _model()
    images = model.renderer("cpu")(TEXTS[:4])  # the fifth fills every patch: the plain path
    keep = pixel_ink(images, 16, model.render_config.background_brightness)
    lengths = keep.sum(1).clamp(min=1)
    assert len(set(lengths.tolist())) > 1 and not keep.all(1).any()
    rows = []
    linear = kernels.linear
    monkeypatch.setattr(kernels, "linear", lambda x, *a, **k: rows.append(
        x.reshape(-1, x.shape[-1]).shape[0]) or linear(x, *a, **k))
    with torch.no_grad():
        model.img(images, keep=keep)
    depth = model.img.Transformer.depth
    # per block: attention out, MLP in, MLP out; then the MAP head's out, MLP in, MLP out
    assert rows[:3 * depth] == [int(lengths.sum())] * (3 * depth)
    assert rows[3 * depth:] == [4] * 3


def test_photos_and_texts_run_every_dense_layer_once_on_all_their_tokens(monkeypatch):
    """Photos (every patch) and texts (ink patches) in one batch, as the training step encodes
    them: each Dense layer runs once on rows x N + sum(lengths) tokens, not once per group."""
    from clippo import kernels
    model = _model()
    texts = model.renderer("cpu")(TEXTS[:4])
    keep_t = pixel_ink(texts, 16, model.render_config.background_brightness)
    photos = torch.randint(0, 256, (3, 3, 64, 64), dtype=torch.uint8)
    keep = torch.cat([torch.ones(3, 16, dtype=torch.bool), keep_t])
    rows = []
    linear = kernels.linear
    monkeypatch.setattr(kernels, "linear", lambda x, *a, **k: rows.append(
        x.reshape(-1, x.shape[-1]).shape[0]) or linear(x, *a, **k))
    with torch.no_grad():
        got = model.img(torch.cat([photos, texts]), keep=keep)
    depth = model.img.Transformer.depth
    tokens = 3 * 16 + int(keep_t.sum(1).clamp(min=1).sum())
    assert rows == [tokens] * (3 * depth) + [7] * 3
    with torch.no_grad():  # and the result is each group's own
        torch.testing.assert_close(got[:3], model.img(photos), rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(got[3:], model.img(texts, keep=keep_t), rtol=1e-5,
                                   atol=1e-5)


def test_token_groups_split_and_join_by_hand():
    from clippo.model.tokens import TokenGroups
    groups = TokenGroups(2, 3, Packing(torch.tensor([1, 2]), 2))
    t = torch.arange(9.0)[:, None]  # dense rows [0 1 2], [3 4 5]; packed [6], [7 8]
    (dense, none), (packed, lengths) = groups.split(t)
    assert none is None and dense[..., 0].tolist() == [[0, 1, 2], [3, 4, 5]]
    assert packed[..., 0].tolist() == [[6, 0], [7, 8]] and lengths.tolist() == [1, 2]
    assert groups.split(t, zeros=False)[1][0][0, 1, 0] in (6, 7, 8)  # a kept token, not 0
    assert torch.equal(groups.join([dense, packed]), t) and groups.batch == 4


@pytest.mark.parametrize("pool_type", ["gap", "0"])
def test_ragged_batch_pools_gap_and_first_token_over_kept_tokens(pool_type):
    from clippo.model.vit import ViT
    torch.manual_seed(0)
    vit = ViT("Ti/16", width=32, depth=2, num_heads=2, mlp_dim=64, image_size=64,
              pool_type=pool_type, num_classes=8).double().eval()
    images = torch.randint(0, 256, (4, 3, 64, 64), dtype=torch.uint8)
    keep = torch.rand(4, 16, generator=torch.Generator().manual_seed(1)) < 0.4
    keep[0] = False  # nothing kept: patch 0
    got = vit(images, keep=keep)
    for b in range(4):
        kept = keep[b].nonzero()[:, 0] if keep[b].any() else torch.tensor([0])
        x = patch_embed_ref(images[b][None], vit.embedding.weight, vit.embedding.bias,
                            vit.pos_embedding)[:, kept]
        x = vit.Transformer(x)
        want = vit.head(x.mean(1) if pool_type == "gap" else x[:, 0])[0]
        torch.testing.assert_close(got[b], want, rtol=1e-10, atol=1e-10)


def _reference_kept(vit, image, kept):
    """One image, float64, no padding and no mask: conv tokens + position embedding of every
    patch, the kept rows selected, then the blocks and the MAP head as the model's modules
    compute them on a plain sequence."""
    x = patch_embed_ref(image[None], vit.embedding.weight, vit.embedding.bias,
                        vit.pos_embedding)[:, kept]
    return vit.head(vit.MAPHead_0(vit.Transformer(x)))


# rows that keep every patch mixed in: after texts (rows reordered back), or first (the
# training step's layout: photos, then texts)
WHOLE_ROWS = {"whole-row-inside": [3], "whole-rows-first": [0, 1]}


@pytest.mark.parametrize("whole_rows", WHOLE_ROWS.values(), ids=WHOLE_ROWS.keys())
def test_ragged_batch_equals_each_image_alone_float64(whole_rows):
    model = _model(dtype=torch.float64)
    images = model.renderer("cpu")(TEXTS)
    keep = pixel_ink(images, 16, model.render_config.background_brightness)
    keep[whole_rows] = True
    got = model.img(images, keep=keep)
    for b in range(len(TEXTS)):
        kept = keep[b].nonzero()[:, 0] if keep[b].any() else torch.tensor([0])
        want = _reference_kept(model.img, images[b], kept)[0]
        torch.testing.assert_close(got[b], want, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("whole_rows", [[], [0]], ids=["as-rendered", "whole-row-first"])
def test_padded_rows_give_finite_gradients_equal_to_unpadded_ones(whole_rows):
    model = _model(dtype=torch.float64).train()
    images = model.renderer("cpu")(TEXTS).double() / 127.5 - 1
    images.requires_grad_()
    keep = pixel_ink(images.detach(), 16, model.render_config.background_brightness)
    keep[whole_rows] = True
    weights = torch.randn(len(TEXTS), 16, dtype=torch.float64,
                          generator=torch.Generator().manual_seed(3))
    (model.img(images, keep=keep) * weights).sum().backward()
    got = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    got_images = images.grad.clone()
    assert all(torch.isfinite(g).all() for g in got.values())
    model.zero_grad()
    images.grad = None
    total = 0
    for b in range(len(TEXTS)):
        kept = keep[b].nonzero()[:, 0] if keep[b].any() else torch.tensor([0])
        total = total + (_reference_kept(model.img, images[b], kept)[0] * weights[b]).sum()
    total.backward()
    for n, p in model.named_parameters():
        if p.grad is not None:
            torch.testing.assert_close(got[n], p.grad, rtol=1e-9, atol=1e-10, msg=n)
    torch.testing.assert_close(got_images, images.grad, rtol=1e-9, atol=1e-10)
    # patches that were dropped get no gradient at all
    assert not got_images[1][:, :, 16:].any()
    if whole_rows:
        assert got_images[0][:, 48:].abs().sum() > 0  # a whole row: its blank patches too


def test_empty_string_is_one_background_token_at_patch_0():
    model = _model("ink", dtype=torch.float64)
    image = model.renderer("cpu")([""])
    assert (image == model.render_config.background_brightness).all()
    want = _unit(_reference_kept(model.img, image[0], torch.tensor([0])))
    torch.testing.assert_close(model.encode_text([""]), want, rtol=1e-10, atol=1e-10)


def test_text_tokens_ink_follows_in_every_text_entry_point():
    model = _model("ink")
    images = model.renderer("cpu")(TEXTS)
    keep = pixel_ink(images, 16, model.render_config.background_brightness)
    want = model.encode_image(images, keep=keep)
    with torch.no_grad():
        torch.testing.assert_close(model.encode_text(TEXTS), want)
        torch.testing.assert_close(model.encode_text(images), want)  # pre-rendered
        torch.testing.assert_close(torch.from_numpy(model.encode(TEXTS, batch_size=2)), want)
        from clippo.eval.common import encode_texts  # clippo eval's text path
        torch.testing.assert_close(encode_texts(model, TEXTS, batch_size=2), want)
        wrapped, _, tokenizer = open_clip_interface(model)
        torch.testing.assert_close(wrapped.encode_text(tokenizer(TEXTS)), want)
        _, _, float_tokenizer = open_clip_interface(model, text_dtype=torch.float32)
        torch.testing.assert_close(wrapped.encode_text(float_tokenizer(TEXTS)), want)
        # photos: always every patch
        torch.testing.assert_close(model.encode_image(images), _model("all").encode_image(images))
        # and "ink" is a different function of the image than "all"
        assert (model.encode_text(TEXTS) - _model("all").encode_text(TEXTS)).abs().max() > 1e-3


def test_text_tokens_all_embeds_as_before():
    """The default: a text is the whole rendered image, exactly encode_image of the render."""
    model = _model()
    assert model.text_tokens == "all" and model.config["text_tokens"] == "all"
    images = model.renderer("cpu")(TEXTS)
    with torch.no_grad():
        assert torch.equal(model.encode_text(TEXTS), model.encode_image(images))


def test_text_tokens_saved_loaded_and_old_configs_default_to_all(tmp_path):
    model = _model("ink")
    model.save_pretrained(tmp_path / "ink")
    assert json.loads((tmp_path / "ink" / "config.json").read_text())["text_tokens"] == "ink"
    loaded = CLIPPO.from_pretrained(tmp_path / "ink")
    assert loaded.text_tokens == "ink"
    with torch.no_grad():
        torch.testing.assert_close(loaded.encode_text(TEXTS), model.encode_text(TEXTS))
    # a config written before the setting existed
    config = json.loads((tmp_path / "ink" / "config.json").read_text())
    del config["text_tokens"]
    (tmp_path / "ink" / "config.json").write_text(json.dumps(config))
    assert CLIPPO.from_pretrained(tmp_path / "ink").text_tokens == "all"
    # create_model: the checkpoint's setting, or the one asked for
    model.save_pretrained(tmp_path / "ink2")
    name = "Ti/16"
    sizes = dict(image_size=64, width=32, depth=2, num_heads=2, mlp_dim=64, out_dim=16)
    assert clippo.create_model(name, pretrained=tmp_path / "ink2", **sizes).text_tokens == "ink"
    assert clippo.create_model(name, pretrained=tmp_path / "ink2", text_tokens="all",
                               **sizes).text_tokens == "all"
    with pytest.raises(ValueError, match="text_tokens must be one of"):
        _model("some")


# ------------------------------------------------------------------ the training step


def _task(text_tokens="all", patch_dropout=0.0):
    model = _model(text_tokens, dtype=torch.float64)
    return ContrastiveTask(model, create_loss("softmax").double(), patch_dropout).train()


def _batch(n=4, pairs=0):
    g = torch.Generator().manual_seed(0)
    batch = {"images": torch.randint(0, 256, (n, 3, 64, 64), dtype=torch.uint8, generator=g),
             "texts": TEXTS[:n], "skipped": 0}
    if pairs:
        batch["texts_a"], batch["texts_b"] = TEXTS[-pairs:], TEXTS[:pairs]
    return batch


def test_step_keeps_ink_on_text_rows_on_both_sides_of_a_pair_and_every_photo_patch():
    task = _task("ink")
    left, right, (keep_l, keep_r) = render_batch(task, _batch(4, pairs=2), "cpu")
    bg = task.model.render_config.background_brightness
    assert keep_l[:4].all()  # photos
    assert torch.equal(keep_l[4:], pixel_ink(left[4:], 16, bg))  # first sentences
    assert torch.equal(keep_r, pixel_ink(right, 16, bg))  # captions and next sentences
    assert render_batch(_task("all"), _batch(4, pairs=2), "cpu")[2] is None


def test_step_loss_and_gradients_with_ink_tokens_equal_per_row_encoding():
    task = _task("ink")
    left, right, keep = render_batch(task, _batch(4, pairs=1), "cpu")
    loss = forward_backward(task, task, [(left, right, keep)])
    got = {n: p.grad.clone() for n, p in task.named_parameters() if p.grad is not None}
    task.zero_grad()
    model = task.model
    zl = torch.cat([model.encode_image(left[i:i + 1], keep=keep[0][i:i + 1])
                    for i in range(left.shape[0])])
    zr = torch.cat([model.encode_image(right[i:i + 1], keep=keep[1][i:i + 1])
                    for i in range(right.shape[0])])
    want = task.loss(zl, zr, model.temperature)
    want.backward()
    torch.testing.assert_close(loss, want.detach(), rtol=1e-10, atol=1e-12)
    for n, p in task.named_parameters():
        if p.grad is not None:
            torch.testing.assert_close(got[n], p.grad, rtol=1e-8, atol=1e-12, msg=n)
    # accumulation splits the masks with the rows
    task.zero_grad()
    micro = [(left[rows], right[rows], (keep[0][rows], keep[1][rows]))
             for rows in (slice(0, 3), slice(3, None))]
    loss2 = forward_backward(task, task, micro)
    torch.testing.assert_close(loss2, loss, rtol=1e-10, atol=1e-12)


def test_patch_dropout_keeps_a_random_share_of_photo_patches_in_training_only():
    task = _task("all", patch_dropout=0.5)
    torch.manual_seed(7)
    left, right, (keep_l, keep_r) = render_batch(task, _batch(4, pairs=1), "cpu")
    assert keep_l[:4].sum(1).tolist() == [8] * 4  # int(16 * 0.5) of each photo's 16
    assert len({tuple(k.tolist()) for k in keep_l[:4]}) > 1  # a fresh choice per photo
    assert keep_l[4:].all() and keep_r.all()  # texts untouched
    torch.manual_seed(7)  # drawn from the step's torch RNG: reproducible from the seed
    assert torch.equal(render_batch(task, _batch(4, pairs=1), "cpu")[2][0], keep_l)
    # the loss uses exactly those tokens: equal to encoding each photo from its kept patches
    zl = task.model.encode_image(left, keep=keep_l)
    zl_ref = torch.cat([_reference_kept(task.model.img, left[i], keep_l[i].nonzero()[:, 0])
                        for i in range(4)])
    torch.testing.assert_close(zl[:4], _unit(zl_ref), rtol=1e-8, atol=1e-10)
    task.eval()
    assert render_batch(task, _batch(4), "cpu")[2] is None  # off at evaluation
    with pytest.raises(ValueError, match="patch dropout"):
        ContrastiveTask(task.model, task.loss, 1.0)
    keep = random_keep(3, 10, 0.95)
    assert keep.sum(1).tolist() == [1, 1, 1]  # at least one patch


def test_patch_dropout_and_ink_together():
    task = _task("ink", patch_dropout=0.25)
    torch.manual_seed(1)
    left, right, (keep_l, keep_r) = render_batch(task, _batch(4), "cpu")
    assert keep_l.sum(1).tolist() == [12] * 4
    assert torch.equal(keep_r, pixel_ink(right, 16, task.model.render_config.background_brightness))


# ------------------------------------------------------------------ clippo train / eval


def test_train_text_tokens_ink_is_saved_and_evaluated_that_way(tmp_path):
    from clippo.eval.common import load_model
    from clippo.train import parse_args, run
    flags = ["--train-data", "builtin", "--train-num-samples", "16", "--batch-size", "4",
             "--steps", "2", "--workers", "0", "--no-progress", "--save-every", "0",
             "--model", "mu/16", "--image-size", "32", "--out-dim", "8"]
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        first = run(parse_args(flags + ["--text-tokens", "ink", "--force-patch-dropout", "0.5",
                                        "--output", str(tmp_path / "a")]))
        # fine-tuning from it without the flag keeps the model's setting
        second = run(parse_args(flags + ["--pretrained", str(first["model_dir"]),
                                         "--output", str(tmp_path / "b")]))
    finally:
        torch.set_num_threads(threads)
    for summary in (first, second):
        model = load_model(summary["model_dir"])  # what clippo eval loads
        assert model.text_tokens == "ink"
        images = model.renderer("cpu")(TEXTS)
        keep = pixel_ink(images, 16, model.render_config.background_brightness)
        with torch.no_grad():
            torch.testing.assert_close(model.encode_text(TEXTS),
                                       model.encode_image(images, keep=keep))
    assert json.loads((tmp_path / "a" / "args.json").read_text())["force_patch_dropout"] == 0.5


def test_demo_passes_text_tokens_to_both_training_stages(tmp_path):
    from clippo.demo import STAGES, recipe_argv
    from clippo.train import parse_args
    for stage in range(len(STAGES)):
        assert parse_args(recipe_argv(tmp_path, stage, text_tokens="ink")).text_tokens == "ink"
        assert "--text-tokens" not in recipe_argv(tmp_path, stage)  # "all": the recipe as is
