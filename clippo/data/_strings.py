"""A read-only list of strings kept in two numpy arrays (UTF-8 bytes + offsets).

Datasets hold millions of captions; as Python str objects every DataLoader worker touching
them bumps their reference counts and so copies the pages fork shared. Two numpy buffers stay
shared.
"""
import numpy as np


class StringTable:
    def __init__(self, strings=()):
        encoded = [s.encode("utf-8") for s in strings]
        self._offsets = np.zeros(len(encoded) + 1, dtype=np.int64)
        if encoded:
            np.cumsum([len(b) for b in encoded], out=self._offsets[1:])
        self._data = np.frombuffer(b"".join(encoded), dtype=np.uint8)

    def __len__(self):
        return len(self._offsets) - 1

    def __getitem__(self, i):
        n = len(self)
        if not -n <= i < n:
            raise IndexError(f"index {i} out of range for {n} strings")
        i %= n
        return self._data[self._offsets[i]:self._offsets[i + 1]].tobytes().decode("utf-8")

    def __iter__(self):
        return (self[i] for i in range(len(self)))
