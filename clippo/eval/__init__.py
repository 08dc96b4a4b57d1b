"""The CLIPPO evaluation suite: zero-shot classification, retrieval (also multilingual),
NLU on rendered text, VQA by rendering, few-shot linear probes; `clippo eval TASK ...`.

    from clippo.eval import evaluate_zeroshot, zero_shot_classifier, evaluate_retrieval
    from clippo.eval import builtin                       # tiny built-in version of each task
    model, preprocess, tokenizer = clippo.open_clip_interface(clippo_model)

Metrics are pure functions in clippo.eval.metrics; readers for the data formats in
clippo.eval.data. Names resolve lazily.
"""
from clippo._lazy import lazy_exports

_EXPORTS = {
    "evaluate_zeroshot": "clippo.eval.zeroshot",
    "zero_shot_classifier": "clippo.eval.zeroshot",
    "evaluate_retrieval": "clippo.eval.retrieval",
    "evaluate_multilingual_retrieval": "clippo.eval.retrieval",
    "evaluate_nlu": "clippo.eval.nlu",
    "evaluate_vqa": "clippo.eval.vqa",
    "evaluate_fewshot": "clippo.eval.fewshot",
    "open_clip_interface": "clippo.eval.interface",
    "load_model": "clippo.eval.common",
}

__getattr__, __dir__, __all__ = lazy_exports(__name__, _EXPORTS)
