"""``modelmora.v1`` messages and service stubs, generated from ``protos/modelmora/v1`` (never edited)."""

from modelmora.codegen import ensure_generated

ensure_generated()
