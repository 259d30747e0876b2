"""``modelmora.v1`` messages and service stubs, generated from ``protos/modelmora/v1`` by
``python -m modelmora.codegen`` and committed (never edited by hand; a unit test keeps them equal to
the protos)."""
