"""LightvLLM on Kubernetes: the deployment spec, manifest and CRD builders, the kopf operator,
DNS discovery of the gRPC workers, and a local control plane (etcd, kube-apiserver,
kube-controller-manager, kube-scheduler on loopback) to test them against.

Importing this package imports none of its submodules: the operator needs kopf and the
discovery resolver dnspython (the ``k8s`` extra)."""
