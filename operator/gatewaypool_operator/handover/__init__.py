"""Bucket handover: when a bucket may change owner, and what the operator remembers.

The decisions, pure, are `gatewaypool_operator.handover.decide`; the state
stored beside the map between passes is `gatewaypool_operator.handover.state`.
"""
