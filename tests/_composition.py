"""The bar a composition claim on the built-in held-out pairs has to clear: not chance, but the
best reader of a single attribute (colour only, position only, ...), computed exactly by
clippo.eval.builtin.single_attribute_readers. "Above" means by `sds` binomial deviations at
that reader's accuracy over the n scored queries, so a model that reads one attribute only
(about the reader's score, give or take sampling) fails."""
import math


def composition_margin(best, n, sds=3):
    return sds * math.sqrt(best * (1 - best) / n)


def assert_composes(score, baselines, n, sds=3, what=""):
    best = baselines["best"]
    assert score >= best + composition_margin(best, n, sds), (
        f"{what}: {score:.3f} does not clear the best single-attribute reader "
        f"({best:.3f}, {baselines}) by {sds} deviations over {n} queries")
