// Pins the prometheus-operator release whose CRDs (example/prometheus-operator-crd/
// in the module) tests/unit/test_monitoring.py validates the ServiceMonitor and
// PrometheusRule of k8s/overlays/prometheus-operator against. go.sum pins the
// module's content; hack/monitoring/crds.sh fetches it through the Go module proxy.
// Nothing here is built.
module asklepios.invalid/hack/monitoring

go 1.24

require github.com/prometheus-operator/prometheus-operator v0.85.0
