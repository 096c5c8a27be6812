"""The spool on an association's data path: one per router process (each worker has one).

An association asks :meth:`SpoolIntake.spool_first` once it knows an
instance's bucket and gateway. Spooled instances are written to a file as
their fragments arrive and committed (fsync, rename, fsync of the folder)
before the sender hears Success. Instances that go straight on are also
written, unsynced, as a copy (:meth:`SpoolIntake.copy`): should their
gateway fail them in a retryable way, midway or in its answer, the copy is
committed and the sender still hears Success; otherwise the copy is deleted.
"""

from __future__ import annotations

import time

from gatewaypool_router.config import RouterConfig
from gatewaypool_router.mapsource import MapHolder
from gatewaypool_router.spool.decide import Availability, spool_first
from gatewaypool_router.spool.store import SpoolStore, SpoolWriter


class SpoolIntake:
    """The spool as the data path sees it."""

    def __init__(self, config: RouterConfig, maps: MapHolder) -> None:
        assert config.spool_dir is not None
        self.store = SpoolStore(config.spool_dir, max_bytes=config.spool_max_bytes)
        self.always = config.spool_when == "Always"
        self.availability = Availability(clock=time.monotonic)
        self._maps = maps

    def spool_first(self, bucket: int, gateway: str) -> bool:
        """Whether this instance goes to the spool instead of its gateway."""
        if self.always:
            return True
        return spool_first(
            always=False,
            bucket_waiting=self.store.waiting(bucket),
            gateway_available=self.availability.available(gateway),
            gateway_ready=self._maps.ready(gateway),
        )

    def writer(self) -> SpoolWriter | None:
        """A file for a spooled instance; None when the spool is full."""
        return None if self.store.full() else self.store.writer()

    def copy(self) -> SpoolWriter | None:
        """A file for the copy of an instance sent on; None when the spool is full."""
        return self.writer()
