"""The ``startupmonkey.v1`` gRPC contracts, shared by every component.

Collector -> Analyser (``MetricsIngest.Stream`` of ``Snapshot``/``Ack``) and Dashboard/CLI ->
Executor (``Executor``) speak the messages defined in ``proto/startupmonkey/v1/*.proto``. The
``*_pb2.py``, ``*_pb2_grpc.py`` and ``*.pyi`` modules here are generated from those files by
``hack/gen_protos.py`` and committed; never edit them by hand (a unit test fails when they are
stale). ``limits`` holds the hand-written size limits both ends of the stream agree on.
Health checks use the standard ``grpc_health.v1`` service from grpcio-health-checking.
"""
