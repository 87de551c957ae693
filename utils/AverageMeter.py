"""Running averages of one or several values (released name and interface)."""
from __future__ import annotations


class AverageMeter:
    def __init__(self, items=None):
        self.items = items
        self.n_items = 1 if items is None else len(items)
        self.reset()

    def reset(self) -> None:
        self._val = [0.0] * self.n_items
        self._sum = [0.0] * self.n_items
        self._count = [0] * self.n_items

    def update(self, values) -> None:
        if not isinstance(values, (list, tuple)):
            values = [values]
        for i, v in enumerate(values):
            self._val[i] = float(v)
            self._sum[i] += float(v)
            self._count[i] += 1

    def val(self, idx=None):
        return self._val[0] if idx is None and self.items is None else (self._val if idx is None else self._val[idx])

    def count(self, idx=None):
        return self._count[0] if idx is None else self._count[idx]

    def avg(self, idx=None):
        avgs = [s / c if c else 0.0 for s, c in zip(self._sum, self._count)]
        return avgs[0] if idx is None and self.items is None else (avgs if idx is None else avgs[idx])
