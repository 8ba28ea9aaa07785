"""The packaged templates (tests/deploy's fixtures) for the security checks on the template."""

from tests.deploy.conftest import packages, templates  # noqa: F401
