"""The ``LightvLLMDeployment`` custom resource definition (``lightvllm.io/v1alpha1``, namespaced).

Its OpenAPI schema is the user-facing form of ``DeploymentSpec``: the API server fills the
defaults and rejects (422) what the schema forbids, before the operator ever sees the object."""

from __future__ import annotations

import logging
from typing import Any

from .spec import AFFINITY_MODES, DEFAULT_IMAGE

logger = logging.getLogger(__name__)

GROUP = "lightvllm.io"
VERSION = "v1alpha1"
KIND = "LightvLLMDeployment"
PLURAL = "lightvllmdeployments"
SINGULAR = "lightvllmdeployment"
MAX_PARALLEL = 64
MAX_GPUS_PER_WORKER = 16
PHASES = ("Pending", "Unschedulable", "Starting", "Ready", "Failed")


def _int(minimum: int, maximum: int, default: int, description: str) -> dict[str, Any]:
    return {"type": "integer", "minimum": minimum, "maximum": maximum, "default": default,
            "description": description}


def placement_schema() -> dict[str, Any]:
    return {
        "type": "object", "default": {},
        "description": "Where the scheduler may place the worker pods.",
        "properties": {
            "spread": {"type": "string", "enum": list(AFFINITY_MODES), "default": "required",
                       "description": "podAntiAffinity among workers over spreadTopologyKey."},
            "spreadTopologyKey": {"type": "string", "minLength": 1,
                                  "default": "kubernetes.io/hostname"},
            "colocateTopologyKey": {"type": "string", "minLength": 1,
                                    "description": "podAffinity: all workers in one domain "
                                                   "of this node label (zone, rack)."},
            "nodeSelector": {"type": "object", "additionalProperties": {"type": "string"}},
        },
    }


def spec_schema() -> dict[str, Any]:
    return {
        "type": "object", "required": ["model"],
        "properties": {
            "model": {"type": "string", "minLength": 1,
                      "description": "Model name or path inside the image."},
            "image": {"type": "string", "minLength": 1, "default": DEFAULT_IMAGE},
            "tensorParallelSize": _int(1, MAX_PARALLEL, 1, "Ranks per pipeline stage."),
            "pipelineParallelSize": _int(1, MAX_PARALLEL, 1, "Pipeline stages."),
            "gpusPerWorker": _int(0, MAX_GPUS_PER_WORKER, 1, "nvidia.com/gpu per worker pod."),
            "placement": placement_schema(),
            "clusterDomain": {"type": "string", "minLength": 1, "default": "cluster.local"},
            "extraEngineArgs": {"type": "array", "items": {"type": "string"},
                                "description": "Extra `lightvllm serve` arguments."},
        },
    }


def status_schema() -> dict[str, Any]:
    count = {"type": "integer", "minimum": 0}
    return {
        "type": "object", "x-kubernetes-preserve-unknown-fields": True,
        "properties": {
            "phase": {"type": "string", "enum": list(PHASES)},
            "workers": count, "scheduledWorkers": count, "readyWorkers": count,
            "unschedulableWorkers": count, "driverReady": {"type": "boolean"},
            "message": {"type": "string"}, "observedGeneration": {"type": "integer"},
        },
    }


def _column(name: str, path: str, kind: str = "integer") -> dict[str, str]:
    return {"name": name, "type": kind, "jsonPath": path}


def custom_resource_definition() -> dict[str, Any]:
    schema = {"type": "object", "properties": {"spec": spec_schema(), "status": status_schema()},
              "required": ["spec"]}
    return {
        "apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition",
        "metadata": {"name": f"{PLURAL}.{GROUP}"},
        "spec": {
            "group": GROUP, "scope": "Namespaced",
            "names": {"kind": KIND, "plural": PLURAL, "singular": SINGULAR,
                      "shortNames": ["lvd"], "categories": ["lightvllm"]},
            "versions": [{
                "name": VERSION, "served": True, "storage": True,
                "schema": {"openAPIV3Schema": schema},
                "subresources": {"status": {}},
                "additionalPrinterColumns": [
                    _column("Model", ".spec.model", "string"),
                    _column("TP", ".spec.tensorParallelSize"),
                    _column("PP", ".spec.pipelineParallelSize"),
                    _column("Scheduled", ".status.scheduledWorkers"),
                    _column("Ready", ".status.readyWorkers"),
                    _column("Phase", ".status.phase", "string")],
            }],
        },
    }


def example_resource(name: str = "llama", namespace: str = "default") -> dict[str, Any]:
    """The shipped example: Llama-3.1-8B over 2 pipeline stages of TP=2, one rank per node, all
    four nodes in one zone."""
    return {
        "apiVersion": f"{GROUP}/{VERSION}", "kind": KIND,
        "metadata": {"name": name, "namespace": namespace},
        "spec": {"model": "meta-llama/Llama-3.1-8B-Instruct", "tensorParallelSize": 2,
                 "pipelineParallelSize": 2, "gpusPerWorker": 1, "image": DEFAULT_IMAGE,
                 "placement": {"spread": "required",
                               "colocateTopologyKey": "topology.kubernetes.io/zone"},
                 "extraEngineArgs": ["--max-model-len", "8192"]},
    }
