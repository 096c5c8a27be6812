"""Local DICOM peers and synthetic data for the demo, the benchmark and the tests.

- :mod:`gatewaypool_local.synth` writes reproducible head-CT studies.
- :mod:`gatewaypool_local.peers` runs real gateways (DCMTK ``storescp``,
  Orthanc, a pynetdicom sink) as processes on loopback, and sends to them.
- :mod:`gatewaypool_local.sink` is the pynetdicom sink's program.
"""
