"""The search index is built by faiss.index_factory: the same index, parameters and results as
the explicit constructors it replaced (IndexFlatIP, IndexIVFFlat, IndexHNSWFlat)."""
import faiss
import numpy as np
import pytest

from unipt_plugin.search.index import build_faiss_index, factory_string


def _explicit(dim, kind, p):
    """The constructors used before the switch, with the same parameters."""
    if kind == "flat":
        return faiss.IndexFlatIP(dim)
    if kind == "ivf":
        quantizer = faiss.IndexFlatIP(dim)
        index = faiss.IndexIVFFlat(quantizer, dim, p["nlist"], faiss.METRIC_INNER_PRODUCT)
        index.nprobe = p["nprobe"]
        return index
    index = faiss.IndexHNSWFlat(dim, p["hnsw_m"], faiss.METRIC_INNER_PRODUCT)
    index.hnsw.efConstruction = p["ef_construction"]
    index.hnsw.efSearch = p["ef_search"]
    return index


PARAMS = {"flat": {}, "ivf": {"nlist": 8, "nprobe": 3}, "hnsw": {"hnsw_m": 8, "ef_construction": 40, "ef_search": 16}}


@pytest.mark.parametrize("kind", sorted(PARAMS))
def test_factory_index_equals_the_explicit_constructor(kind):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((600, 16)).astype("float32")
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    q = x[:20] + 0.05 * rng.standard_normal((20, 16)).astype("float32")
    got, ref = build_faiss_index(16, kind, PARAMS[kind]), _explicit(16, kind, PARAMS[kind])
    assert got.metric_type == faiss.METRIC_INNER_PRODUCT
    for index in (got, ref):
        if not index.is_trained:
            index.train(x)
        index.add(x)
    d1, i1 = got.search(q, 10)
    d2, i2 = ref.search(q, 10)
    np.testing.assert_array_equal(i1, i2)
    np.testing.assert_array_equal(d1, d2)
    # the same index on disk, byte for byte (so indexes saved before the switch load the same)
    np.testing.assert_array_equal(faiss.serialize_index(got), faiss.serialize_index(ref))


def test_factory_strings():
    assert factory_string("flat", {}) == "Flat"
    assert factory_string("ivf", {"nlist": 64}) == "IVF64,Flat"
    assert factory_string("hnsw", {}) == "HNSW32"
    with pytest.raises(ValueError, match="unknown index kind 'pq'"):
        factory_string("pq", {})
