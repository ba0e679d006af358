"""annvq.storage.concat: indexes sharing one trained model combined into one, without re-encoding."""
from __future__ import annotations

import numpy as np
import pytest

import annvq
from annvq.errors import DuplicateIdError, InvalidInputError
from annvq.index.base import BaseIndex
from annvq.storage import concat


def _parts(tmp_path, spec: str, x: np.ndarray, ids: np.ndarray, cuts: list[int]) -> tuple[BaseIndex, list]:
    model = annvq.index_factory(x.shape[1], spec)
    model.train(x)
    dirs = []
    for i, (a, b) in enumerate(zip([0, *cuts], [*cuts, len(x)])):
        part = BaseIndex.from_state(*model.model_state())
        part.add(x[a:b], ids[a:b])
        part.save(tmp_path / f"p{i}")
        dirs.append(tmp_path / f"p{i}")
    return model, dirs


@pytest.mark.parametrize("spec", ["IVF8,PQ4x4,Refine", "RQ2x4", "IVF8,SQ8", "IVF8,PQ4x4fs", "PQ4x4fs"])
def test_concat_equals_one_add_and_keeps_exact_vectors(tmp_path, spec):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(2000, 16)).astype(np.float32)
    ids = rng.permutation(10_000)[:2000].astype(np.int64)
    model, dirs = _parts(tmp_path, spec, x, ids, [700, 1300])
    part = annvq.load(dirs[1])
    part.remove(ids[700:710])  # deleted rows are left out
    part.save(dirs[1])
    stats = concat(dirs, tmp_path / "all", metadata={"origin": "test"})
    out = annvq.load(tmp_path / "all")
    assert stats.files >= 3 and out.storage.metadata == {"origin": "test"}
    assert out.fingerprint() == model.fingerprint() and len(out.segments) == 1 and out.ntotal == 1990
    ref = BaseIndex.from_state(*model.model_state())
    ref.add(x, ids)
    ref.remove(ids[700:710])
    ref.compact(full=True)
    seg, rseg = out.segments[0], ref.segments[0]
    assert np.array_equal(np.diff(seg.offsets), np.diff(rseg.offsets))  # same rows per list
    o, ro = np.argsort(seg.ids), np.argsort(rseg.ids)
    assert np.array_equal(seg.ids[o], rseg.ids[ro]) and np.array_equal(seg.codes_at(o), rseg.codes_at(ro))
    xq = x[:30] + 0.01
    D, I = out.search(xq, 10)
    Dr, Ir = ref.search(xq, 10)
    assert np.array_equal(D, Dr) and np.array_equal(np.sort(I, axis=1), np.sort(Ir, axis=1))
    if out.rerank:  # exact vectors came through, read from the new directory
        vec, exact = out.fetch(ids[1500:1510])
        assert exact and np.array_equal(vec, x[1500:1510])


def test_concat_selects_segments_and_refuses_bad_sources(tmp_path):
    rng = np.random.default_rng(1)
    x = rng.normal(size=(900, 8)).astype(np.float32)
    ids = np.arange(900, dtype=np.int64)
    _, dirs = _parts(tmp_path, "PQ2x4", x, ids, [300, 600])
    concat(dirs, tmp_path / "some", select=lambda path, entry: path.name != "p1")
    assert annvq.load(tmp_path / "some").ntotal == 600
    concat([dirs[0]], tmp_path / "none", select=lambda path, entry: False)
    assert annvq.load(tmp_path / "none").ntotal == 0
    with pytest.raises(DuplicateIdError, match="more than one source"):
        concat([dirs[0], dirs[0]], tmp_path / "twice")
    assert not (tmp_path / "twice").exists()
    other = annvq.index_factory(8, "PQ2x4")
    other.train(x + 1)
    other.add(x[:5], ids[:5] + 10_000)
    other.save(tmp_path / "other")
    with pytest.raises(InvalidInputError, match="another model"):
        concat([dirs[0], tmp_path / "other"], tmp_path / "mixed")
    untrained = annvq.index_factory(8, "PQ2x4")
    untrained.save(tmp_path / "untrained")
    with pytest.raises(InvalidInputError, match="untrained"):
        concat([tmp_path / "untrained"], tmp_path / "u")
    with pytest.raises(InvalidInputError, match="not an empty directory"):
        concat(dirs, tmp_path / "some")
    with pytest.raises(InvalidInputError, match="no source"):
        concat([], tmp_path / "empty")
