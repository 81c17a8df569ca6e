"""Contract-checked fakes of the upstream vendors: the specs as validators (`contract`) and the
helpers the `vendors` fixture (tests/fixtures_vendors.py) uses to hold the stand-ins to them."""

from tests.fakes.contract import OPERATIONS, SPEC_FILES, validate_request, validate_response

__all__ = ["OPERATIONS", "SPEC_FILES", "validate_request", "validate_response"]
