"""megalodon_lit.data: bytes as tokens, corpus sources and their errors, reading no more than needed, the unigram
entropy, and batches that depend only on (seed, step)."""
import math, sys

import pytest
import torch

from _subproc import run
from megalodon_lit.data import (VOCAB_SIZE, Corpus, batch_at, bits_per_byte, check_fits, corpus_files, decode, encode,
                                eval_windows, read_corpus, unigram_entropy)


def test_encode_decode_round_trip():
    s = "Megalodon — ∞ context, 東京\n"
    assert decode(encode(s)) == s and encode(s).max() < 256
    assert decode([0xE2, 0x88]) == "\ufffd"  # a cut UTF-8 sequence becomes U+FFFD, not an exception


def test_corpus_sources(tmp_path, text_corpus):
    with pytest.raises(FileNotFoundError, match="no such file"): read_corpus(tmp_path / "missing")
    with pytest.raises(FileNotFoundError, match="contains no files"): read_corpus(tmp_path)
    (tmp_path / "empty.txt").write_text("")
    with pytest.raises(ValueError, match="is empty"): read_corpus(tmp_path)
    (tmp_path / "blob.bin").write_bytes(b"\x00\x01\x02" * 100)
    with pytest.raises(ValueError, match="is empty"): read_corpus(tmp_path)  # binary files are skipped
    (tmp_path / "a.txt").write_text("hello")
    assert decode(read_corpus(tmp_path).data) == "hello"
    assert read_corpus(str(text_corpus / "*.py")).files == len(list(text_corpus.glob("*.py")))
    c = read_corpus(text_corpus, max_bytes=1000)
    assert len(c) == 1000
    d = read_corpus(None, max_bytes=200_000)  # the default: this Python's own standard library source
    assert len(d) == 200_000 and d.files >= 1 and all(p.suffix == ".py" for p in corpus_files(None)[:20])
    with pytest.raises(ValueError, match="val_fraction"): c.split(1.5)
    with pytest.raises(ValueError, match="max_bytes must be an int >= 1, got -5"): read_corpus(text_corpus, max_bytes=-5)


def test_read_corpus_reads_only_what_it_needs(tmp_path):
    "A 1 GB file under max_bytes=50_000 was read whole (a 3 GB one took 3.4 GB of memory): the peak memory must not grow by the file."
    big = tmp_path / "big.txt"
    with open(big, "wb") as f: f.write(b"def f(x):\n    return x\n" * 2000); f.truncate(1 << 30)  # sparse: no disk used
    code = ("import resource, sys; from megalodon_lit.data import read_corpus\n"
            "before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss\n"
            "c = read_corpus(sys.argv[1], max_bytes=50_000)\n"
            "print(len(c), (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) // 1024)")
    r = run([sys.executable, "-c", code, str(big)], timeout=120)
    n, grew_mb = map(int, r.stdout.split())
    assert n == 50_000 and grew_mb < 64, (n, grew_mb, r.stderr)


def test_unigram_entropy_values():
    assert unigram_entropy(torch.arange(256, dtype=torch.uint8)) == pytest.approx(8.0)
    assert unigram_entropy(encode("aaaa")) == pytest.approx(0.0)
    assert unigram_entropy(encode("abab")) == pytest.approx(1.0)


def test_batches_are_a_function_of_the_step(text_corpus):
    data = read_corpus(text_corpus).data
    a, b = batch_at(data, 5, 4, 32, seed=1), batch_at(data, 5, 4, 32, seed=1)
    assert torch.equal(a[0], b[0]) and torch.equal(a[0][:, 1:], a[1][:, :-1])
    assert not torch.equal(a[0], batch_at(data, 6, 4, 32, seed=1)[0])
    wins = eval_windows(data, 4, 32, 3)
    assert len(wins) == 3 and wins[0][0].shape == (4, 32)
    with pytest.raises(ValueError, match="fewer than one batch"): check_fits(data[:100], 4, 32)
    with pytest.raises(ValueError, match="fewer than one batch"): batch_at(data[:10], 0, 1, 32)


def test_windows_are_slices_of_the_data():
    "Each input row is a contiguous run of the data and its targets the same run one byte later; evaluation windows are fixed and evenly spaced."
    data = torch.arange(1000, dtype=torch.int64).remainder(VOCAB_SIZE).to(torch.uint8)
    x, y = batch_at(data, 3, 6, 17, seed=2)
    assert x.shape == y.shape == (6, 17) and x.dtype == torch.int64
    for row_x, row_y in zip(x, y):
        s = int(torch.nonzero(data == row_x[0])[0])  # the bytes repeat every 256: any matching start has the same window
        assert torch.equal(row_x, data[s:s + 17].long()) and torch.equal(row_y, data[s + 1:s + 18].long())
    wins = eval_windows(data, 2, 10, 4)
    starts = [int(xb[i, 0]) for xb, _ in wins for i in range(2)]
    assert starts == [int(i * (1000 - 11) / 7) % VOCAB_SIZE for i in range(8)]  # linspace(0, n - L - 1, 8), truncated
    assert all(torch.equal(a[0], b[0]) for a, b in zip(wins, eval_windows(data, 2, 10, 4)))
    check_fits(data[:22], 2, 10)  # exactly one batch of two windows of 11 bytes
    with pytest.raises(ValueError, match="fewer than one batch"): check_fits(data[:21], 2, 10)


def test_held_out_split_is_the_tail():
    c = Corpus(torch.arange(200, dtype=torch.uint8), "test", 1)
    train, held = c.split(0.1)
    assert len(train) == 180 and torch.equal(held, c.data[180:]) and torch.equal(torch.cat([train, held]), c.data)
    assert len(c.split(0.001)[1]) == 1  # at least one held-out byte
    assert bits_per_byte(math.log(2)) == pytest.approx(1.0) and bits_per_byte(8 * math.log(2)) == pytest.approx(8.0)
