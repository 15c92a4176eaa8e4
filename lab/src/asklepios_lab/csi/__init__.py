"""The CSI spec's messages (``csi_pb2``), generated from csi.proto of spec v1.12.0.

``csi_pb2.py``/``csi_pb2.pyi`` are generated code, committed so that installing the lab
needs no code generator; ``gen.sh`` beside them regenerates them (grpcio-tools 1.85.1,
protoc of protobuf 7.35.1; the runtime must be protobuf >= 7.35.1).
"""

DRIVER = "lab.csi.asklepios.dev"
"""The name of the lab's CSI driver (CSIDriver, CSINode entries, PVs' ``csi.driver``)."""
