"""The GatewayPool Kubernetes operator (kopf).

It owns everything a GatewayPool needs and is the only writer of the bucket
map. One pass over a pool is `gatewaypool_operator.reconcile`: observe, plan
(pure, `gatewaypool_operator.plan`), apply, finish. The kopf handlers
(`gatewaypool_operator.handlers`) and the periodic resync
(`gatewaypool_operator.resync`) start passes through
`gatewaypool_operator.runner`.
"""
