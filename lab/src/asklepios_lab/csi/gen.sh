#!/usr/bin/env bash
# Regenerates csi_pb2.py and csi_pb2.pyi (committed; DO NOT EDIT them) from the CSI spec's
# csi.proto, pinned below, with grpcio-tools in a throw-away venv. Only the messages are
# generated: the lab's plugin registers its handlers with grpc's generic handlers itself
# (see asklepios_lab.csiplugin), so no csi_pb2_grpc.py is needed.
#
#   bash lab/src/asklepios_lab/csi/gen.sh
set -euo pipefail
SPEC_VERSION=v1.12.0
GRPCIO_TOOLS=1.85.1
here=$(cd "$(dirname "$0")" && pwd)
work=$(mktemp -d); trap 'rm -rf "$work"' EXIT
dir=$(cd "$work" && go mod download -json "github.com/container-storage-interface/spec@$SPEC_VERSION" \
  | sed -n 's/^\t"Dir": "\(.*\)",$/\1/p')
python3 -m venv "$work/venv"
"$work/venv/bin/pip" install -q "grpcio-tools==$GRPCIO_TOOLS"
cp "$dir/csi.proto" "$work/csi.proto"
(cd "$work" && venv/bin/python -m grpc_tools.protoc -I. --python_out="$here" --pyi_out="$here" csi.proto)
echo "generated $here/csi_pb2.py and csi_pb2.pyi from spec $SPEC_VERSION csi.proto ($(sha256sum "$work/csi.proto" | cut -c1-16))"
