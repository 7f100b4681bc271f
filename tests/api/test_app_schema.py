"""Schemathesis fuzzes every operation of the OpenAPI schema: no 5xx, and what is
answered matches what the schema says (status codes, content types, JSON bodies).

Bounded: a fixed number of examples per operation, over ASGI (no socket).
"""

from __future__ import annotations

import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from pymongo.database import Database
from schemathesis.specs.openapi.checks import positive_data_acceptance

from itm.api import create_app
from itm.config import Settings
from tests.support.apidata import fill

EXAMPLES_PER_OPERATION = 40
# Schema-valid yet refused by design, with a 400: a cursor the API did not issue, and
# `since` after `until`. JSON Schema cannot say either, so this one check is left out.
EXCLUDED = [positive_data_acceptance]


@pytest.fixture
def api_schema(mongo_uri: str, db_name: str, db: Database) -> schemathesis.BaseSchema:
    fill(db)
    # Schemathesis calls an ASGI app as host "testserver": a name the API must be told.
    settings = Settings(mongo_uri=mongo_uri, db=db_name, api_allowed_hosts="testserver")
    return schemathesis.openapi.from_asgi("/openapi.json", create_app(settings))


schema = schemathesis.pytest.from_fixture("api_schema")


@schema.parametrize()
@settings(
    max_examples=EXAMPLES_PER_OPERATION,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
def test_api_conforms_to_its_schema(case: schemathesis.Case) -> None:
    case.call_and_validate(excluded_checks=EXCLUDED)
