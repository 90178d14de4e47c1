from tests.hub_server import hub_server  # noqa: F401
