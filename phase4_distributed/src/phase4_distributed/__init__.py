"""LightvLLM phase 4: tensor and pipeline parallelism over torch.distributed, executors whose
workers are subprocesses, Ray actors or gRPC services, and the Kubernetes deployment (manifests,
a CRD and its operator). Phase 3 never imports this package: it registers its executors and
parallel layers through phase 3's registries when imported."""
