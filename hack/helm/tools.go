//go:build tools

// Package tools pins Helm, whose CLI (cmd/helm) lints, renders, installs and tests
// charts/asklepios. hack/helm/build.sh builds it from this module.
package tools

import _ "helm.sh/helm/v4/cmd/helm"
