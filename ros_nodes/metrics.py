"""What the policy node's controller counts and times: chunks, holds, refusals, latency (policy/status)."""

from __future__ import annotations

from collections import Counter, deque
from dataclasses import dataclass, field

import numpy as np


@dataclass
class Metrics:
    chunks: int = 0
    holds: int = 0
    late_chunks: int = 0  # inference finished after its whole chunk was in the past
    dropped_results: int = 0  # finished after an instruction change / hold / e-stop
    unsafe_chunks: int = 0  # refused by the guard (NaN/inf)
    starved_ticks: int = 0  # control ticks while running with no planned point left (missed cycles)
    rejected_messages: int = 0  # every message refused, whatever the reason (sum of ``rejections``)
    rejections: Counter = field(default_factory=Counter)  # kind -> count: malformed, stamp_age, jump, ...
    discarded_instructions: int = 0  # arrived while the e-stop was latched (or in a fault)
    repeated_instructions: int = 0  # identical to the current/pending one: nothing to change
    superseded_instructions: int = 0  # pending, replaced by a newer one before being applied (debounce)
    refused_resets: int = 0  # reset calls without the operator's token
    faults: int = 0
    latencies: deque = field(default_factory=lambda: deque(maxlen=10_000))  # image received -> published (s)
    inference_times: deque = field(default_factory=lambda: deque(maxlen=10_000))

    def summary(self) -> dict:
        def stats(values) -> dict:
            if not values:
                return {"n": 0}
            v = np.asarray(values) * 1e3
            return {"n": int(v.size), "median_ms": round(float(np.median(v)), 2),
                    "p99_ms": round(float(np.percentile(v, 99)), 2), "max_ms": round(float(v.max()), 2),
                    "last_ms": round(float(v[-1]), 2)}
        return {"chunks": self.chunks, "holds": self.holds, "late_chunks": self.late_chunks,
                "dropped_results": self.dropped_results, "unsafe_chunks": self.unsafe_chunks,
                "starved_ticks": self.starved_ticks, "rejected_messages": self.rejected_messages,
                "rejections": dict(sorted(self.rejections.items())),
                "discarded_instructions": self.discarded_instructions,
                "repeated_instructions": self.repeated_instructions,
                "superseded_instructions": self.superseded_instructions,
                "refused_resets": self.refused_resets, "faults": self.faults,
                "latency": stats(self.latencies), "inference": stats(self.inference_times)}
