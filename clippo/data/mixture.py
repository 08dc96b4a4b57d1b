"""Data mixtures as OpenCLIP writes them: several WebDataset sources joined by "::" in
--train-data, and --train-data-upsampling-factors with one factor per source, "::"-joined.

    --train-data 'laion/{000..999}.tar::cc12m/{000..099}.tar' \\
    --train-data-upsampling-factors '1::10' --dataset-resampled

Meaning (OpenCLIP's): every shard of source i gets the weight f_i, and with --dataset-resampled
each reader draws its next shard with replacement, with probability proportional to the
weights. Source i's expected share of the shards drawn is therefore

    f_i * n_i / sum_j f_j * n_j          (n_i: the number of shards of source i)

so equal factors keep the sources' natural proportions (by shard count), and f_i = 10 makes
source i ten times as frequent as its size alone would. Factors need --dataset-resampled (as
in OpenCLIP: without replacement every shard is read once an epoch and weights cannot apply).
"""

SEPARATOR = "::"


def split_sources(train_data):
    """The "::"-joined sources of --train-data (one source: a one-element list)."""
    sources = [s.strip() for s in str(train_data).split(SEPARATOR)]
    if any(not s for s in sources):
        raise ValueError(f"--train-data {train_data!r}: an empty source between '::'")
    return sources


def parse_factors(text, num_sources):
    """'1::2.5' -> [1.0, 2.5]: one finite factor >= 0 per source, not all zero."""
    parts = str(text).split(SEPARATOR)
    if len(parts) != num_sources:
        raise ValueError(f"--train-data-upsampling-factors {text!r} has {len(parts)} "
                         f"factor(s) for {num_sources} source(s) in --train-data (one each, "
                         f"'::'-joined)")
    factors = []
    for part in parts:
        try:
            value = float(part)
        except ValueError:
            raise ValueError(f"--train-data-upsampling-factors: {part!r} is not a number") \
                from None
        if not (value >= 0 and value != float("inf")):
            raise ValueError(f"--train-data-upsampling-factors: {part!r} must be a finite "
                             f"number >= 0")
        factors.append(value)
    if not any(factors):
        raise ValueError("--train-data-upsampling-factors: at least one factor must be > 0")
    return factors


def weighted_shards(train_data, factors=None):
    """(shard urls, per-shard weights or None) of --train-data and its upsampling factors."""
    from clippo.data.wds import expand_shard_urls
    sources = split_sources(train_data)
    if factors is None:
        return expand_shard_urls(sources), None
    factors = parse_factors(factors, len(sources))
    urls, weights = [], []
    for source, factor in zip(sources, factors):
        shards = expand_shard_urls(source)
        urls += shards
        weights += [factor] * len(shards)
    return urls, weights


def expected_shares(train_data, factors):
    """Each source's expected share of the shards drawn (see the module docstring)."""
    from clippo.data.wds import expand_shard_urls
    sources = split_sources(train_data)
    factors = parse_factors(factors, len(sources))
    mass = [f * len(expand_shard_urls(s)) for s, f in zip(sources, factors)]
    return [m / sum(mass) for m in mass]
