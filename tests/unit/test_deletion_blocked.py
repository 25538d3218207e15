"""What a blocked deletion tells the user: the store's error, when it tries again, and the exact way out."""

from __future__ import annotations

from forge_operator.status.deletion import (
    ABANDON_ANNOTATION,
    MAX_RETRY_DELAY,
    abandonment_approver,
    abandonment_reason,
    store_blocked,
)


def test_retries_back_off_from_the_interval_to_the_cap_and_name_the_way_out() -> None:
    delays = [store_blocked("forgedatasets", "corpus", "ml", "minio:9000", "timed out", retry, 5.0)[1]
              for retry in range(6)]
    assert delays == [5.0, 10.0, 20.0, 40.0, MAX_RETRY_DELAY, MAX_RETRY_DELAY]
    message, _ = store_blocked("forgedatasets", "corpus", "ml", "minio:9000", "timed out", 2, 5.0)
    assert "object store minio:9000: timed out; attempt 3, next in 20s" in message
    assert f"kubectl annotate forgedatasets/corpus -n ml {ABANDON_ANNOTATION}='<reason>'" in message


def test_the_annotation_gives_the_reason_and_managed_fields_say_who_set_it() -> None:
    body = {"metadata": {"annotations": {ABANDON_ANNOTATION: "  bucket was wiped by the storage team "},
                         "managedFields": [
                             {"manager": "forge-operator", "operation": "Apply", "fieldsV1": {"f:status": {}}},
                             {"manager": "kubectl-annotate", "operation": "Update", "time": "2026-11-30T10:00:00Z",
                              "fieldsV1": {"f:metadata": {"f:annotations": {f"f:{ABANDON_ANNOTATION}": {}}}}}]}}
    assert abandonment_reason(body) == "bucket was wiped by the storage team"
    assert abandonment_approver(body) == "kubectl-annotate (Update at 2026-11-30T10:00:00Z)"
    assert abandonment_reason({"metadata": {}}) == "" and abandonment_approver({"metadata": {}}) == "unknown"
