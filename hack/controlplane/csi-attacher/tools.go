//go:build tools

// Package tools pins the CSI external-attacher (cmd/csi-attacher) that the lab runs
// beside its control plane: build.sh builds it from this module with the module's
// own replace lines copied into go.mod (a dependency's replace lines do not apply).
package tools

import _ "github.com/kubernetes-csi/external-attacher/v4/cmd/csi-attacher"
