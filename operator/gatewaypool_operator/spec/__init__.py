"""A GatewayPool's spec, read once into typed data.

`gatewaypool_operator.spec.parse.parse_spec` reads a spec into the frozen
dataclasses of `gatewaypool_operator.spec.types`, with the readers of the pod
template and container fields in `gatewaypool_operator.spec.pod` and the
field reader, `SpecError` and the value checks in
`gatewaypool_operator.spec.fields`.
"""
