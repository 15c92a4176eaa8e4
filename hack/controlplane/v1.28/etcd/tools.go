//go:build tools

// Package tools pins etcd; the root package of go.etcd.io/etcd/server/v3 is the etcd binary.
package tools

import _ "go.etcd.io/etcd/server/v3"
