"""How often a Batch job's status is asked: one schedule for ``python flow.py run --with batch``, the
step operator's wait and the deferrable trigger.

A fixed interval is wrong at both ends: a short job ends most of an interval before anyone notices
(a step that ran 4 s held its task for 30), and polling a long job every second spends AWS's
account-wide Batch API quota on a job nothing is happening to. So the pause grows with the time
the job has spent in its current status, the way Metaflow's Batch client starts at one
DescribeJobs a second and slows down once a job has been running a while: each pause is
:attr:`PollSchedule.growth` of that time, never less than :attr:`~PollSchedule.first_seconds` nor
more than :attr:`~PollSchedule.ceiling_seconds`. A change of status starts the clock again (a job
that queued for an hour and then ran for ten seconds is noticed within a second of ending), and
the noticing lag of a job that has been in its status for ``t`` seconds is at most
``max(first_seconds, growth * t)`` capped by the ceiling.

The number of polls then grows with the logarithm of a job's time up to the ceiling, and linearly
(one per ceiling) after it, instead of linearly from the start.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

#: Metaflow's Batch client asks DescribeJobs at most once a second (its ``Throttle``).
FIRST_SECONDS = 1.0
#: A pause is this fraction of the time the job has been in its current status.
GROWTH = 0.1


@dataclass(frozen=True)
class PollSchedule:
    """The pause before the next status poll of a Batch job, by its time in its current status.

    ``ceiling_seconds`` is ``[flowspec] batch_poll_seconds``; a ceiling below ``first_seconds``
    makes every pause the ceiling (a fixed interval, as that option meant before it was a ceiling).
    """

    ceiling_seconds: float
    first_seconds: float = FIRST_SECONDS
    growth: float = GROWTH

    def __post_init__(self) -> None:
        if not (self.ceiling_seconds > 0 and self.first_seconds > 0 and self.growth >= 0):
            raise ValueError(f"a poll schedule needs pauses above 0 and a growth of 0 or more: {self!r}")

    def pause(self, seconds_in_status: float) -> float:
        """Seconds to wait before the next poll of a job that has been in its status this long."""
        return min(self.ceiling_seconds, max(self.first_seconds, self.growth * seconds_in_status))

    def polls_within(self, seconds: float) -> int:
        """How many polls a job that stays ``seconds`` in one status gets (the first one included):
        what the schedule costs, in DescribeJobs calls."""
        polls, elapsed = 1, 0.0
        while True:
            elapsed += self.pause(elapsed)
            if elapsed > seconds:
                return polls
            polls += 1

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, document: dict[str, Any]) -> PollSchedule:
        return cls(**document)
