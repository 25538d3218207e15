"""Duplicate removal: exact (a hash of the normalised content) and near (MinHash signatures over word
shingles, banded into a locality-sensitive hash index).

Both indexes are open-addressing tables of 64-bit keys in numpy arrays (8 bytes a slot), so memory
grows with documents seen at a small, fixed cost per document and holds no text.
"""

from __future__ import annotations

import hashlib
import math
import re
from functools import lru_cache

import numpy as np
import numpy.typing as npt

from forge_trainer.config import NearDedupConfig

U64 = npt.NDArray[np.uint64]
_MASK64 = (1 << 64) - 1
_WORD = re.compile(r"\w+")
_DIGITS = re.compile(r"\d+")
_PRIME = 0x100000001B3  # polynomial base for shingle hashes (odd, so invertible mod 2**64)
_CHUNK_ROWS = 2048  # shingles per MinHash block, bounding the (shingles x permutations) matrix


def content_hash(text: str) -> bytes:
    """16-byte digest of a document's content: bytes 0-7 key exact dedup, 8-15 pick its split."""
    return hashlib.blake2b(text.encode(), digest_size=16).digest()


class U64Set:
    """A set of non-zero 64-bit integers in one numpy array (open addressing, linear probing, at most
    70% full: about 11-23 bytes a key)."""

    MAX_LOAD = 0.7

    def __init__(self, capacity: int = 1 << 16) -> None:
        self._allocate(max(4, (capacity - 1).bit_length()))

    def _allocate(self, bits: int) -> None:
        self.table: U64 = np.zeros(1 << bits, dtype=np.uint64)
        self.shift = 64 - bits
        self.limit = int(len(self.table) * self.MAX_LOAD)
        self.size = 0

    def _slot(self, key: int) -> int:
        mask = len(self.table) - 1
        i = ((key * 0x9E3779B97F4A7C15) & _MASK64) >> self.shift  # Fibonacci hashing: the top bits
        table = self.table
        while True:
            cur = int(table[i])
            if cur == 0 or cur == key:
                return i
            i = (i + 1) & mask

    def add(self, key: int) -> bool:
        """Insert `key` (0 is stored as 1); True when it was already present."""
        key = key or 1
        i = self._slot(key)
        if int(self.table[i]) == key:
            return True
        self.table[i] = key
        self.size += 1
        if self.size > self.limit:
            self._grow()
        return False

    def __contains__(self, key: int) -> bool:
        key = key or 1
        return int(self.table[self._slot(key)]) == key

    def _grow(self) -> None:
        old = self.table
        self._allocate(64 - self.shift + 1)
        for start in range(0, len(old), 1 << 16):  # in chunks: no full copy of the old keys
            chunk = old[start : start + (1 << 16)]
            for key in chunk[chunk != 0].tolist():
                self.table[self._slot(key)] = key
                self.size += 1


class ExactDedup:
    """Remembers content hashes; `seen` says whether a document's content came before."""

    def __init__(self) -> None:
        self.index = U64Set()

    def seen(self, digest: bytes) -> bool:
        """Record the document with this `content_hash`; True when it is a duplicate."""
        return self.index.add(int.from_bytes(digest[:8], "little"))


def lsh_params(threshold: float, num_perm: int) -> tuple[int, int]:
    """(bands, rows per band) minimising the weighted false-positive and false-negative areas of the
    LSH S-curve around `threshold` (the choice datasketch makes)."""

    def collide(s: float, b: int, r: int) -> float:
        return float(1 - (1 - s**r) ** b)

    def area(lo: float, hi: float, b: int, r: int, miss: bool, steps: int = 200) -> float:
        h = (hi - lo) / steps
        points = (collide(lo + (k + 0.5) * h, b, r) for k in range(steps))
        return sum((1 - p) if miss else p for p in points) * h

    best, best_err = (1, num_perm), math.inf
    for b in range(1, num_perm + 1):
        for r in range(1, num_perm // b + 1):
            fp = area(0.0, threshold, b, r, miss=False)
            fn = area(threshold, 1.0, b, r, miss=True)
            err = 0.5 * fp + 0.5 * fn
            if err < best_err:
                best, best_err = (b, r), err
    return best


@lru_cache(maxsize=32)
def _cached_lsh_params(threshold: float, num_perm: int) -> tuple[int, int]:
    return lsh_params(threshold, num_perm)


class _Powers:
    """P**k and P**-k mod 2**64 for k up to a length, grown on demand."""

    def __init__(self) -> None:
        self.up: U64 = np.ones(1, dtype=np.uint64)
        self.down: U64 = np.ones(1, dtype=np.uint64)

    def ensure(self, n: int) -> None:
        if len(self.up) > n:
            return
        size = max(n + 1, 2 * len(self.up), 4096)
        inv = pow(_PRIME, -1, 1 << 64)
        up = np.full(size, _PRIME, dtype=np.uint64)
        up[0] = 1
        down = np.full(size, inv, dtype=np.uint64)
        down[0] = 1
        self.up = np.cumprod(up, dtype=np.uint64)
        self.down = np.cumprod(down, dtype=np.uint64)


def _mix(x: U64) -> U64:
    """splitmix64 finaliser: spreads polynomial hashes over all 64 bits."""
    x = x ^ (x >> np.uint64(30))
    x = x * np.uint64(0xBF58476D1CE4E5B9)
    x = x ^ (x >> np.uint64(27))
    x = x * np.uint64(0x94D049BB133111EB)
    return x ^ (x >> np.uint64(31))


_NON_WORD_TO_SPACE = bytes(b if chr(b).isascii() and (chr(b).isalnum() or b == ord("_")) else 32
                           for b in range(256))
_ASCII_DIGITS = re.compile(rb"[0-9]+")


def simplify(text: str) -> bytes:
    """Lower-cased words (numbers folded to 0) joined by single spaces, as UTF-8: what shingles see."""
    if text.isascii():  # the same result through bytes operations, several times faster
        raw = text.encode().lower()
        if _ASCII_DIGITS.search(raw):
            raw = _ASCII_DIGITS.sub(b"0", raw)
        return b" ".join(raw.translate(_NON_WORD_TO_SPACE).split())
    return " ".join(_WORD.findall(_DIGITS.sub("0", text.lower()))).encode()


class MinHasher:
    """MinHash signatures of word shingles, vectorised with numpy."""

    def __init__(self, num_perm: int, shingle_size: int, seed: int) -> None:
        rng = np.random.default_rng(seed)
        self.a: U64 = (rng.integers(1, 1 << 63, size=num_perm, dtype=np.uint64) * np.uint64(2) + np.uint64(1))
        self.b: U64 = rng.integers(0, 1 << 63, size=num_perm, dtype=np.uint64)
        self.shingle_size = shingle_size
        self.powers = _Powers()

    def shingles(self, text: str) -> U64:
        """64-bit hashes of every run of `shingle_size` consecutive words (empty when fewer words)."""
        raw = simplify(text)
        if not raw:
            return np.zeros(0, dtype=np.uint64)
        b = np.frombuffer(raw, dtype=np.uint8)
        spaces = np.flatnonzero(b == 32)
        n_words = len(spaces) + 1
        k = self.shingle_size
        if n_words < k:
            return np.zeros(0, dtype=np.uint64)
        n = len(b)
        self.powers.ensure(n)
        # prefix sums S[i] = sum_{j<i} b[j] * P**-(j+1); hash of bytes [l, r) = P**r * (S[r] - S[l])
        prefix = np.zeros(n + 1, dtype=np.uint64)
        np.cumsum(b.astype(np.uint64) * self.powers.down[1 : n + 1], dtype=np.uint64, out=prefix[1:])
        starts = np.empty(n_words, dtype=np.int64)
        starts[0] = 0
        starts[1:] = spaces + 1
        ends = np.empty(n_words, dtype=np.int64)
        ends[:-1] = spaces
        ends[-1] = n
        left = starts[: n_words - k + 1]
        right = ends[k - 1 :]
        return _mix(self.powers.up[right] * (prefix[right] - prefix[left]))

    def signature(self, shingles: U64) -> U64:
        """Minimum over shingles of each permutation's hash (a*x+b mod 2**64)."""
        sig = np.full(len(self.a), np.iinfo(np.uint64).max, dtype=np.uint64)
        for start in range(0, len(shingles), _CHUNK_ROWS):
            block = np.multiply(shingles[start : start + _CHUNK_ROWS, None], self.a)
            block += self.b  # in place: no temporaries, several times faster than one expression
            np.minimum(sig, block.min(axis=0), out=sig)
        return sig


class NearDedup:
    """Streaming near-duplicate detection: a document whose signature shares any LSH band with an
    earlier document is a near duplicate. Every document's bands are indexed, kept or not, so a
    chain of near duplicates keeps only its first member (as connected components would)."""

    def __init__(self, config: NearDedupConfig, seed: int) -> None:
        self.bands, self.rows = _cached_lsh_params(config.threshold, config.num_permutations)
        self.hasher = MinHasher(config.num_permutations, config.shingle_size, seed)
        self.index = U64Set()
        rng = np.random.default_rng(seed + 1)
        self.band_salt: U64 = rng.integers(1, 1 << 63, size=self.bands, dtype=np.uint64)
        self.row_mult: U64 = rng.integers(1, 1 << 63, size=self.rows, dtype=np.uint64) | np.uint64(1)

    def band_keys(self, sig: U64) -> list[int]:
        """One 64-bit key per band: its rows combined, salted by the band's number."""
        used = sig[: self.bands * self.rows].reshape(self.bands, self.rows)
        keys = _mix((used * self.row_mult).sum(axis=1, dtype=np.uint64) ^ self.band_salt)
        return [int(k) for k in keys.tolist()]

    def is_duplicate(self, text: str) -> bool:
        """Index `text`; True when it is a near duplicate of an earlier document."""
        shingles = self.hasher.shingles(text)
        if len(shingles) == 0:
            return False
        duplicate = False
        for key in self.band_keys(self.hasher.signature(shingles)):
            if self.index.add(key):
                duplicate = True
        return duplicate


def later_positions(keys: U64, positions: U64) -> U64:
    """The positions (sorted, unique) that share a key with an earlier position: the documents the
    streaming indexes above call duplicates, computed for one hash partition of the keys at once.

    A document is a duplicate when one of its keys was indexed by an earlier document, which is the same
    as: its position is above the smallest position holding that key. The rule depends only on the
    global order, so any partition of the keys across workers gives the same answer."""
    if len(keys) == 0:
        return np.zeros(0, dtype=np.uint64)
    order = np.lexsort((positions, keys))
    k, p = keys[order], positions[order]
    first = np.ones(len(k), dtype=bool)
    first[1:] = k[1:] != k[:-1]
    group_start = np.maximum.accumulate(np.where(first, np.arange(len(k)), 0))
    return np.unique(p[p > p[group_start]])
