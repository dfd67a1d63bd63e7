"""What a sampling job costs on this device, from measurement, and the per-job limit: a job whose cost would pass
`Limits.max_job_seconds` is refused before it starts when the speed of its model at its size is known (measured by an
earlier run in this process), and otherwise within its first model call (the call is cut once it alone passes the
job's share of the limit) or first step (when the projection passes it)."""
from __future__ import annotations

from dataclasses import dataclass

from studio.errors import RequestError


def duration(seconds: float) -> str:
    """Seconds as a person reads them: '45 s', '12 min', '3.5 h'."""
    if seconds < 10:
        return f"{seconds:.1f} s"
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


@dataclass
class Budget:
    """One run of the loop against the limit: `calls` model calls of `rows` latents at `size` (height, width)."""

    key: tuple
    calls: int
    size: tuple[int, int]
    limit: float  # seconds; 0: none
    device: str

    @property
    def per_call(self) -> float | None:
        """The longest one model call may take before the job is sure to pass the limit (None: no limit)."""
        return self.limit / self.calls if self.limit and self.calls else None

    def too_costly(self, seconds_per_call: float, how: str) -> RequestError:
        height, width = self.size
        return RequestError(
            f"This job would take about {duration(seconds_per_call * self.calls)} on this device ({self.device}): "
            f"{self.calls} model calls at {width}x{height}, {how}. The limit is {duration(self.limit)} per job. "
            "Lower the size, steps or batch, or start the studio with a higher --max-job-minutes.")

    def check_known(self, speeds: dict) -> None:
        """Refuse before starting when an earlier run measured this model at this size and the job would pass the limit."""
        known = speeds.get(self.key)
        if self.limit and known is not None and known * self.calls > self.limit:
            raise self.too_costly(known, f"{known:.2f} s each as measured here earlier")

    def check_step(self, speeds: dict, elapsed: float, calls_done: int) -> None:
        """After a step: remember the speed; refuse after the first step when the projection passes the limit."""
        per_call = elapsed / max(calls_done, 1)
        speeds[self.key] = per_call
        if self.limit and calls_done <= 2 and per_call * self.calls > self.limit:
            raise self.too_costly(per_call, f"{per_call:.2f} s each as the first step measured")

    def call_cut(self) -> RequestError:
        """The message when a single call passed its share of the limit and was cut."""
        height, width = self.size
        return RequestError(
            f"One model call at {width}x{height} takes more than {duration(self.per_call)} on this device "
            f"({self.device}), so {self.calls} of them would pass the limit of {duration(self.limit)} per job; stopped. "
            "Lower the size, steps or batch, or start the studio with a higher --max-job-minutes.")
