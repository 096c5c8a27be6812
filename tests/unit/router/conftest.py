"""Fixtures of the router's unit tests."""

from support.scanners import implementation

# Test modules that make scanners with support.scanners.make run once per
# implementation: pytestmark = pytest.mark.usefixtures("implementation").
__all__ = ["implementation"]
