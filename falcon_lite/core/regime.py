"""When a run changes regime, with hysteresis: what the `regime` events announce.

Each diagnostics row says whether the estimate is in the *constant* regime (some
|bias|/sigma >= 1, ``constant_regime = 1``) or the *identity* regime (every |bias|/sigma < 1).
Row by row this flag flickers: |bias|/sigma is noisy and near 1 for long stretches (the
seed's run crosses 316 times by step 6 000). The tracker smooths the flag into ``share``, an
exponential moving average of it (weight ``alpha`` per row, about 1/alpha rows of memory),
and announces a change only when the share leaves a dead band:

    identity -> constant   when share >= enter   (0.8)
    constant -> identity   when share <= leave   (0.2)

On the seed's run that gives two changes: to identity near step 1 160 (after warm-up) and
to constant near step 4 830 (the explosion). The first row sets the regime without a
change (a run resumed from a checkpoint starts over, as a fresh watcher would). Pure
Python: no numpy, no clock.
"""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass
class RegimeTracker:
    alpha: float = 0.05
    enter: float = 0.8
    leave: float = 0.2
    regime: str | None = None  # "identity" or "constant"; None before the first row
    share: float | None = None  # the moving average of constant_regime

    def update(self, constant: float) -> str | None:
        """Take one row's ``constant_regime`` (1, 0; nan counts as constant); return the new
        regime's name if the run has just changed regime, else None."""
        flag = 1.0 if math.isnan(constant) or constant >= 0.5 else 0.0
        if self.share is None:
            self.share = flag
            self.regime = "constant" if flag else "identity"
            return None
        self.share += self.alpha * (flag - self.share)
        if self.regime == "identity" and self.share >= self.enter:
            self.regime = "constant"
            return self.regime
        if self.regime == "constant" and self.share <= self.leave:
            self.regime = "identity"
            return self.regime
        return None
