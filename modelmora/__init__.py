"""Generated gRPC/protobuf code of seed 001 §3 (package ``modelmora.v1``); see ``protos/README.md``."""
