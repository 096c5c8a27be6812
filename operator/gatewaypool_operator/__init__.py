"""The GatewayPool Kubernetes operator (kopf).

It owns everything a GatewayPool needs and is the only writer of the bucket
map. One pass over a pool is `gatewaypool_operator.reconcile`: observe
(`gatewaypool_operator.observe`), plan (pure, `gatewaypool_operator.plan`),
apply (`gatewaypool_operator.apply`), finish. The plan reads the spec
through `gatewaypool_operator.spec`, builds what the pool owns with
`gatewaypool_operator.children` and moves buckets as
`gatewaypool_operator.handover` decides. The kopf handlers
(`gatewaypool_operator.handlers`) and the periodic resync
(`gatewaypool_operator.resync`) start passes through
`gatewaypool_operator.runner`.
"""
