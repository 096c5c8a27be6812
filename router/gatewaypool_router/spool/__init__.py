"""Store and forward: the router's durable spool (``--spool-dir``).

What it guarantees
------------------
- Success only for an instance on a gateway or durably in the spool: a
  spooled instance is answered once its data set and metadata are fsynced,
  and its directory entry too (write to ``tmp/``, fsync, rename into
  ``queue/<bucket>/``, fsync the folder). A half-written one is never
  acknowledged and is deleted at the next start.
- A full spool (``--spool-max-bytes``) or a failing volume answers 0xA700
  (out of resources), never Success; it serves again once forwarding frees
  room.
- Per bucket, first in first out: while a bucket has entries waiting on
  this router, its new instances queue behind them, so a study stays in
  order (within an association, strictly). Entries go to the bucket's
  owner in the current map.
- At least once: an entry is deleted after its gateway's answer. A send
  begun before a crash, or one whose answer never came (from the spool, or
  on the instance's way to its gateway before it was spooled instead), is
  sent again and counted as a resend (``sending/`` markers).
- A permanent refusal (a failure status that is not 0xA7xx) moves the entry
  to ``refused/`` with its status: counted, shown, kept, not retried. The
  router's association being refused (0x0110, 0x0124) is not the instance's
  fault: it is retried.
- Nothing is dropped for age: past ``--spool-retention`` an entry is logged
  (``spool.overdue``) and counted (``gatewaypool_router_spool_overdue_instances``).

When an instance is spooled (``--spool-when``)
----------------------------------------------
``Always``: every instance. ``GatewayUnavailable`` (the default): when its
bucket has entries waiting, when the map source marks its gateway not
Ready (``readiness.json`` beside the map, or ``--readiness``; see
`gatewaypool.bucketmap.Readiness`), when its gateway failed an instance in
this process less than 2 s ago, or when on the way the gateway fails it
with a retryable status (connection refused or timed out, association
aborted, a 0xA7xx answer). So that the last case needs no resend by the
sender, every instance sent on is also written to a ``tmp/`` file, without
fsync, and that copy is committed or deleted once the gateway has answered:
this is why the router copies rather than splices with a spool.

A gateway marked not Ready is not tried, neither by the data path nor by
the forwarder: its instances queue in the spool, per bucket behind what is
already there, and leave in order once a readiness marks it Ready again
(or a new map gives its buckets to another gateway), as after an outage.
The operator marks a pod within a pass of the change (at most its resync
interval, 30 s by default; every 2 s while an owner is marked); meanwhile
the router learns of a gateway that is down from the failures above.

One spool per router, several processes
---------------------------------------
With ``--workers N`` every worker writes entries into the one folder; one
process, the one holding the map source (the supervisor, or the router
itself with one worker), forwards them (:mod:`.forwarder`). The state file
(last sequence number, bytes held) is read and written under ``flock(2)``:
a commit takes the next sequence number and renames its file into the queue
under that lock, so entries appear in sequence order to the forwarder's
scan, and a worker sees a bucket's waiting entries by its folder not being
empty. The forwarder alone deletes entries (under the same lock, which also
removes a bucket's folder once empty), and sends each bucket's entries one
at a time (:mod:`.queue`). On start, the forwarding process recovers the
folder (:func:`.store.recover`) before any worker accepts an association;
on SIGTERM it forwards for what is left of ``--shutdown-grace`` after the
associations drained, and leaves the rest on disk for the next start.

Modules: :mod:`.store` (the files), :mod:`.decide` (pure decisions),
:mod:`.queue` (the FIFO index, no I/O), :mod:`.forwarder` (the queue kept
current, the outcomes acted on), :mod:`.lane` (one gateway's sending),
:mod:`.metrics` (what Prometheus reads), :mod:`.intake` (the data path's
side).
"""
