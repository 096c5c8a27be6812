"""Local DICOM peers and synthetic data for the demo, the benchmark and the tests.

- :mod:`gatewaypool_local.synth` writes reproducible head-CT studies.
- :mod:`gatewaypool_local.peers` runs real gateways (DCMTK ``storescp``,
  Orthanc, a pynetdicom sink, dicom-rs) as processes on loopback, and sends
  to them.
- :mod:`gatewaypool_local.sink` is the pynetdicom sink's program,
  :mod:`gatewaypool_local.scu` the pynetdicom sender.
- :mod:`gatewaypool_local.routerproc` runs the router as a process.
- :mod:`gatewaypool_local.demo` is ``gatewaypool local``,
  :mod:`gatewaypool_local.bench` is ``gatewaypool bench``.
"""
