"""The outage reporter is the shared module rtml.outage (issue 19); the scheduler's components
(rtml.ops.scheduler, rewired on another branch) still name it here."""

from rtml.outage import Outage

__all__ = ["Outage"]
