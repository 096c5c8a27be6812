"""GatewayPool: study-affine routing of DICOM instances to a pool of gateways.

This package holds what the router and the operator share: the study hash,
the bucket map model and the assignment of buckets to gateways, logging and
the ``gatewaypool`` command line.
"""

__version__ = "0.1.0"
