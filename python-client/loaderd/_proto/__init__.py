"""The daemon's protobuf messages, generated from ``proto/proto/loaderd.proto``.

``loaderd_pb2`` is written by ``scripts/gen_proto.sh`` (protoc ``--python_out``) and
committed, so the package installs without protoc; ``tests/test_proto.py`` fails while it and
the .proto disagree. Do not edit it by hand.
"""
