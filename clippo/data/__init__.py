"""Training data: readers (CSV/TSV, WebDataset shards, text pairs), image transforms, collates,
the image-text / text-pair batch mixer, and the built-in synthetic data.

Datasets yield (uint8 image [3, S, S], caption) or (text_a, text_b), or None (or a Skipped
naming it) for a sample to skip; the collates drop and count those items. Text is never rendered here: the training
step renders it on the training device. Submodules load on first use, so importing
clippo.data pulls in neither Pillow nor webdataset.
"""
from clippo._lazy import lazy_exports

_EXPORTS = {
    "ImageTransform": "clippo.data.transforms",
    "ImageDecodeError": "clippo.data.transforms",
    "load_image": "clippo.data.transforms",
    "try_load_image": "clippo.data.transforms",
    "CsvDataset": "clippo.data.csv_dataset",
    "read_csv_pairs": "clippo.data.csv_dataset",
    "DataFormatError": "clippo.data.textfiles",
    "WebImageTextDataset": "clippo.data.wds",
    "expand_shard_urls": "clippo.data.wds",
    "TextPairDataset": "clippo.data.text_pairs",
    "read_text_pairs": "clippo.data.text_pairs",
    "collate_image_text": "clippo.data.collate",
    "collate_text_pairs": "clippo.data.collate",
    "MixedLoader": "clippo.data.mix",
    "split_batch_size": "clippo.data.mix",
}

# built-in synthetic data
_EXPORTS.update({name: "clippo.data.builtin" for name in (
    "COLORS", "SHAPES", "POSITIONS", "LANGUAGES", "SPLITS", "combos", "draw_scene", "caption",
    "class_name", "class_prompts", "BuiltinImageText", "BuiltinTextPairs")})

__getattr__, __dir__, __all__ = lazy_exports(__name__, _EXPORTS)
