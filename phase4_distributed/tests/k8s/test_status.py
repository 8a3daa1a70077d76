"""The status summary from pod conditions (the same dicts the API server returns)."""

from __future__ import annotations

from phase4_distributed.k8s.status import summarize


def pod(scheduled: str | None, reason: str = "", message: str = "", deleting: bool = False):
    conditions = [] if scheduled is None else [
        {"type": "PodScheduled", "status": scheduled, "reason": reason, "message": message}]
    metadata = {"deletionTimestamp": "2026-01-01T00:00:00Z"} if deleting else {}
    return {"metadata": metadata, "status": {"conditions": conditions}}


def test_phases_follow_the_pods():
    assert summarize(2, [], 0, False)["phase"] == "Pending"
    assert summarize(2, [pod("True"), pod(None)], 0, False)["phase"] == "Pending"
    starting = summarize(2, [pod("True"), pod("True")], 0, False)
    assert (starting["phase"], starting["scheduledWorkers"]) == ("Starting", 2)
    assert summarize(2, [pod("True"), pod("True")], 2, True)["phase"] == "Ready"
    assert summarize(2, [pod("True"), pod("True")], 2, False)["phase"] == "Starting"


def test_unschedulable_pods_carry_the_scheduler_message():
    status = summarize(3, [pod("True"), pod("False", "Unschedulable", "Insufficient nvidia.com/gpu"),
                           pod("True")], 0, False)
    assert (status["phase"], status["unschedulableWorkers"]) == ("Unschedulable", 1)
    assert status["message"] == "Insufficient nvidia.com/gpu"


def test_terminating_pods_do_not_count():
    status = summarize(1, [pod("True"), pod("True", deleting=True)], 0, False)
    assert status["scheduledWorkers"] == 1
