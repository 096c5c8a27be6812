"""``gatewaypool bench``: what the router costs, in figures.

- :mod:`~gatewaypool_local.bench.run` runs the whole benchmark (``main``);
- :mod:`~gatewaypool_local.bench.cases`: who sends what to whom, and how it is timed;
- :mod:`~gatewaypool_local.bench.measure`: what is measured, read from ``/proc``;
- :mod:`~gatewaypool_local.bench.report`: the figures as data, and their text.

The command itself is registered in :mod:`gatewaypool_local.cli`.
"""
