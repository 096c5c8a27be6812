"""``gatewaypool locate UID`` (and ``kubectl gwp locate UID``): where did a study go?

- :mod:`.answer`: the join of the bucket, the map, the handover and every
  router's record into one answer, and its text and JSON (pure);
- :mod:`.sources`: where those come from: a pool on Kubernetes (the map
  ConfigMap, the pool's status, each router pod's record through the API
  server's pod proxy), or a router and a map file on this machine;
- :mod:`.command`: the command line.
"""
