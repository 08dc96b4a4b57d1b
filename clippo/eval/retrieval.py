"""Image-text retrieval (COCO / Flickr30k Karpathy test splits) and multilingual retrieval
(Crossmodal-3600), as CLIP_benchmark scores them: every image against every caption,
image_retrieval_recall@K for text queries and text_retrieval_recall@K for image queries (an
image query is right when any of its captions is among the K best). Ties: see
clippo.eval.metrics (equal scores rank in gallery order; ties="pessimistic" puts every tied
wrong candidate first).
"""
import torch

from clippo.eval import metrics as M
from clippo.eval.common import NothingScored, encode_images, encode_texts
from clippo.eval.data import ImageDataset, loader

RECALL_KS = (1, 5, 10)


class CaptionedImages(ImageDataset):
    """[(image, captions)] -> (uint8 image or None, captions, index); captions a list of
    strings, or {language: [strings]} for multilingual retrieval."""

    def __init__(self, pairs, image_size):
        pairs = list(pairs)
        super().__init__([p[0] for p in pairs], [p[1] for p in pairs], image_size)


def _encode_gallery(model, dataset, batch_size, num_workers, precision, progress):
    """(features, captions, indices, skipped) of the decodable images; none: NothingScored."""
    model.eval()
    batches = loader(dataset, batch_size, num_workers)
    out = encode_images(model, batches, precision=precision, progress=progress,
                        desc="images", total=len(batches))
    if not len(out[1]):
        raise NothingScored(f"no image could be decoded ({len(out[3])} skipped): nothing to "
                            f"retrieve")
    return out


def _scores_and_metrics(zimg, captions_per_image, model, ks, ties, text_batch_size, precision,
                        progress, desc="captions", scored=None):
    texts, text_to_image = [], []
    for i, caps in enumerate(captions_per_image):
        if isinstance(caps, str):
            caps = [caps]
        if not caps:
            raise ValueError(f"image {i} has no captions")
        texts += list(caps)
        text_to_image += [i] * len(caps)
    ztxt = encode_texts(model, texts, batch_size=text_batch_size, precision=precision,
                        progress=progress, desc=desc).double()
    zimg = zimg.double()
    # scores a block of queries at a time: COCO's 25k x 5k matrix is never held whole
    ranks = M.retrieval_ranks(lambda j0, j1: (ztxt[j0:j1] @ zimg.t()).numpy(),
                              lambda i0, i1: (zimg[i0:i1] @ ztxt.t()).numpy(),
                              text_to_image, len(zimg), ties, chunk=512)
    if scored is not None:  # only these images' queries count (the whole gallery competes)
        keep = torch.as_tensor(scored, dtype=torch.bool).numpy()
        ranks = ranks[0][keep[text_to_image]], ranks[1][keep]
    return M.retrieval_metrics_from_ranks(*ranks, ks), len(texts)


def _scored_mask(indices, queries):
    """Which of the decoded images (dataset `indices`) are in `queries` (None: all)."""
    if queries is None:
        return None
    wanted = set(int(q) for q in queries)
    mask = [int(i) in wanted for i in indices]
    if not any(mask):
        raise NothingScored("none of the query images could be decoded")
    return mask


def evaluate_retrieval(model, dataset, *, ks=RECALL_KS, ties="first", batch_size=64,
                       text_batch_size=256, num_workers=0, precision="fp32", progress=False,
                       queries=None):
    """Recall@K both ways over a gallery of captioned images.

    dataset: a CaptionedImages (or any dataset yielding (image or None, [captions], index)).
    Images that cannot be decoded are left out with their captions and listed in "skipped".
    queries: dataset indices of the images whose queries are scored (the image, and its
    captions as text queries); every image and caption stays in the gallery. Default: all.
    """
    zimg, captions, indices, skipped = _encode_gallery(model, dataset, batch_size, num_workers,
                                                       precision, progress)
    scored = _scored_mask(indices, queries)
    out, n_texts = _scores_and_metrics(zimg, captions, model, ks, ties, text_batch_size,
                                       precision, progress, scored=scored)
    out.update(num_images=len(captions), num_texts=n_texts, skipped=list(skipped))
    if scored is not None:
        out["num_query_images"] = int(sum(scored))
    return out


def evaluate_multilingual_retrieval(model, dataset, languages=None, *, ks=RECALL_KS,
                                    ties="first", batch_size=64, text_batch_size=256,
                                    num_workers=0, precision="fp32", progress=False,
                                    queries=None):
    """Crossmodal-3600-style retrieval: per language, the images against that language's
    captions; the images are encoded once. No tokenizer: every script is just rendered.
    queries: as evaluate_retrieval's.

    dataset yields (image or None, {language: [captions]}, index). Returns the mean over
    languages under the usual keys, and "per_language": {lang: {...}}.
    """
    zimg, captions, indices, skipped = _encode_gallery(model, dataset, batch_size, num_workers,
                                                       precision, progress)
    scored = _scored_mask(indices, queries)
    if languages is None:
        languages = sorted(captions[0])
    per_language = {}
    for lang in languages:
        caps = []
        for i, c in enumerate(captions):
            if lang not in c:
                raise ValueError(f"image {i} has no captions in {lang!r}")
            caps.append(c[lang])
        per_language[lang], _ = _scores_and_metrics(zimg, caps, model, ks, ties,
                                                    text_batch_size, precision, progress,
                                                    desc=f"captions ({lang})", scored=scored)
    keys = list(next(iter(per_language.values())))
    out = {k: float(torch.tensor([per_language[l][k] for l in languages],
                                 dtype=torch.float64).mean()) for k in keys}
    out.update(per_language=per_language, languages=list(languages),
               num_images=len(captions), skipped=list(skipped))
    if scored is not None:
        out["num_query_images"] = int(sum(scored))
    return out
