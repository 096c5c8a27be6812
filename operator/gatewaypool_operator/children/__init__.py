"""Everything a GatewayPool owns, built as plain data from its spec; nothing here does I/O.

`gatewaypool_operator.children.desired` lists the objects; the gateways'
are built in `gatewaypool_operator.children.gateway`, the routers' in
`gatewaypool_operator.children.router`, what both pod templates share in
`gatewaypool_operator.children.podparts`, and every name, label and the
ownerReference in `gatewaypool_operator.children.names`.
"""
