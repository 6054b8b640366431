"""The example apps' tests use the e2e fixtures (the real CLI under setsid, with cleanup)."""

from tests.e2e.conftest import corral  # noqa: F401
