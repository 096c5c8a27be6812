"""Real DICOM peers on loopback: the gateways the router forwards to, and the senders that feed it.

The router is only as trustworthy as the peers it is tested against, so
these are real, independent programs run as processes, each module one
implementation:

- :mod:`~gatewaypool_local.peers.process`: running a program (one
  :class:`~gatewaypool_local.peers.process.ManagedProcess` base: start,
  readiness wait, stop, log tail) and waiting on conditions (``wait_until``,
  ``free_port``);
- :mod:`~gatewaypool_local.peers.gateway`: what every gateway is (the
  ``GatewayPeer`` interface, what it ``Received``, readiness by C-ECHO);
- :mod:`~gatewaypool_local.peers.dcmtk`: ``storescp`` in bit-preserving
  mode, ``storescu`` and ``echoscu``;
- :mod:`~gatewaypool_local.peers.orthanc`: Orthanc, a real PACS;
- :mod:`~gatewaypool_local.peers.pynetdicom_sink`: the pynetdicom sink,
  which keeps the exact received bytes and can answer chosen statuses;
- :mod:`~gatewaypool_local.peers.dicomrs`: dicom-rs (Rust)
  ``dicom-storescp`` and ``dicom-storescu``;
- :mod:`~gatewaypool_local.peers.gdcm`: GDCM's ``gdcmscu``.

:mod:`gatewaypool_local.scu` is the pynetdicom sender, which reports every
instance's status. Import each name from the module that defines it.
"""
