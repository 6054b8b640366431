"""The example apps' tests use the e2e fixtures (the real CLI under setsid, with cleanup)."""

from tests.apps.postgres import postgres_server, postgres_url  # noqa: F401  (a private PostgreSQL server)
from tests.e2e.conftest import corral  # noqa: F401
