"""effilab.data: the stdlib byte corpus, its cache, and the batch samplers."""
import torch
import pytest

from effilab import data as D

SMALL = 300_000


@pytest.fixture()
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("EFFILAB_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


@pytest.fixture(scope="module")
def text():
    return D.corpus(SMALL, cache=False)


def test_corpus_is_deterministic_cached_and_mostly_ascii(cache, monkeypatch):
    a = D.corpus(SMALL)
    assert a.dtype == torch.uint8 and a.dim() == 1 and a.numel() == SMALL
    files = list(cache.glob("*.pt"))
    assert len(files) == 1 and D.cache_dir() == cache
    b = D.corpus(SMALL, cache=False)  # built again from the sources
    assert torch.equal(a, b)

    def boom(_max_bytes):
        raise AssertionError("the second call must read the cache, not rebuild")

    monkeypatch.setattr(D, "_build", boom)
    c = D.corpus(SMALL)
    assert torch.equal(a, c)
    monkeypatch.undo()

    ascii_fraction = (a < 128).float().mean().item()
    assert ascii_fraction > 0.99
    text = bytes(a[:100_000].tolist())
    assert b"def " in text and b"import " in text and b"\r\n" not in text
    assert D.corpus_info(a, SMALL)["n_bytes"] == SMALL


def test_corrupt_cache_file_is_rebuilt(cache):
    a = D.corpus(SMALL)
    (path,) = cache.glob("*.pt")
    path.write_bytes(b"not a tensor")
    assert torch.equal(D.corpus(SMALL), a)


def test_corpus_prefix_property(text):
    # A smaller cap is a prefix of a larger one: the subset is chosen in a fixed order.
    assert torch.equal(D.corpus(50_000, cache=False), text[:50_000])
    with pytest.raises(ValueError):
        D.corpus(0)


def test_train_val_split(text):
    tr, va = D.train_val_split(text, 0.1)
    assert tr.numel() + va.numel() == text.numel()
    assert va.numel() == round(0.1 * text.numel())
    assert torch.equal(torch.cat([tr, va]), text)


def test_get_batch_shapes_targets_and_determinism(text):
    x, y = D.get_batch(text, 5, 32, seed=0)
    assert x.shape == y.shape == (5, 32) and x.dtype == y.dtype == torch.int64
    assert torch.equal(x[:, 1:], y[:, :-1])
    # every row is a real window of the corpus
    hay = bytes(text.tolist())
    for row_x, row_y in zip(x, y):
        window = bytes(row_x.tolist()) + bytes([row_y[-1].item()])
        assert window in hay
    x2, y2 = D.get_batch(text, 5, 32, seed=0)
    assert torch.equal(x, x2) and torch.equal(y, y2)
    g = torch.Generator().manual_seed(0)
    a, _ = D.get_batch(text, 5, 32, generator=g)
    b, _ = D.get_batch(text, 5, 32, generator=g)
    assert torch.equal(a, x) and not torch.equal(a, b)  # a generator gives a stream of batches
    it = D.batches(text, 5, 32, seed=0)
    assert torch.equal(next(it)[0], a) and torch.equal(next(it)[0], b)
    with pytest.raises(ValueError):
        D.get_batch(text[:10], 2, 32)


def test_variable_length_batch_invariants(text):
    B, T, lo = 16, 64, 8
    x, y, mask = D.variable_length_batch(text, B, T, lo, seed=3, pad_id=7)
    assert x.shape == y.shape == mask.shape == (B, T)
    assert x.dtype == y.dtype == torch.int64
    assert set(mask.unique().tolist()) <= {0, 1}
    lengths = mask.sum(1)
    assert int(lengths.min()) >= lo and int(lengths.max()) <= T
    assert len(set(lengths.tolist())) > 3  # uneven
    # right padding: each row's mask is ones then zeros
    assert torch.equal(mask, (torch.arange(T)[None, :] < lengths[:, None]).long())
    pad = mask == 0
    assert torch.all(x[pad] == 7) and torch.all(y[pad] == 7)
    hay = bytes(text.tolist())
    for b in range(B):
        L = int(lengths[b])
        assert torch.equal(x[b, 1:L], y[b, :L - 1])
        assert bytes(x[b, :L].tolist()) + bytes([y[b, L - 1].item()]) in hay
    x2, y2, m2 = D.variable_length_batch(text, B, T, lo, seed=3, pad_id=7)
    assert torch.equal(x, x2) and torch.equal(y, y2) and torch.equal(mask, m2)
    x3, _, _ = D.variable_length_batch(text, B, T, lo, seed=4, pad_id=7)
    assert not torch.equal(x, x3)
    with pytest.raises(ValueError):
        D.variable_length_batch(text, B, T, T + 1)


def test_encode_decode_roundtrip():
    s = "def f(x):\n    return x  # é"
    t = D.encode(s)
    assert t.dtype == torch.uint8 and D.decode(t) == s
