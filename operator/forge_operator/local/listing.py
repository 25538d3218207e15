"""`forge get` and `forge describe`: the saved statuses as tables, the way kubectl shows them."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from forge_operator.api import DATASET, DEPLOYMENT, KINDS, TRAINING_RUN
from forge_operator.api.common import parse_time


def _at(obj: Any, json_path: str) -> Any:
    for part in json_path.strip(".").split("."):
        obj = obj.get(part) if isinstance(obj, dict) else None
    return obj


def _age(stamp: str | None, now: datetime) -> str:
    created = parse_time(stamp)
    if created is None:
        return "<unknown>"
    secs = int((now - created).total_seconds())
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if secs >= size:
            return f"{secs // size}{unit}"
    return f"{max(secs, 0)}s"


def _cell(value: Any) -> str:
    if value is None:
        return "<none>" if value is None else str(value)
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def _table(rows: list[list[str]]) -> str:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return "\n".join("   ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows)


def render_get(records: list[dict[str, Any]], wide: bool = False, now: datetime | None = None) -> str:
    """A table per kind, like `kubectl get forge` (printer columns of the CRDs; `wide` adds the rest)."""
    now = now or datetime.now(UTC)
    out = []
    for info in KINDS:
        mine = [r for r in records if r.get("kind") == info.kind]
        if not mine:
            continue
        cols = [c for c in info.printer_columns if c["name"] != "Age" and (wide or not c.get("priority"))]
        rows = [["NAME"] + [c["name"].upper() for c in cols] + ["AGE"]]
        for r in mine:
            name = f"{info.singular}.forge.ai/{r['metadata']['name']}"
            rows.append([name] + [_cell(_at(r, c["jsonPath"])) for c in cols]
                        + [_age(r["metadata"].get("creationTimestamp"), now)])
        out.append(_table(rows))
    return "\n\n".join(out)


def find_record(records: list[dict[str, Any]], ref: str) -> list[dict[str, Any]]:
    """The records named `ref`: `NAME`, or `KIND/NAME` with a kind, plural or short name."""
    kind = None
    name = ref
    if "/" in ref:
        prefix, name = ref.split("/", 1)
        prefix = prefix.lower().removesuffix(".forge.ai")
        for info in KINDS:
            if prefix in (info.kind.lower(), info.plural, info.singular, *info.short_names):
                kind = info.kind
    return [r for r in records if r["metadata"]["name"] == name and (kind is None or r.get("kind") == kind)]


DETAIL_FIELDS = {
    DATASET.kind: ["stage", "documentsDone", "counts", "manifestUri", "digest", "tokenizerUri", "outputUri"],
    TRAINING_RUN.kind: ["progress", "worldSize", "tokensSeen", "loss", "evalLoss", "tokensPerSecond",
                        "meanReward", "successRate", "kl", "completionLength", "clipFraction", "evalMetrics",
                        "checkpoints", "finalModelUri", "finalModelDigest", "lineage", "outputUri"],
    DEPLOYMENT.kind: ["endpoint", "readyReplicas", "modelUri", "modelDigest"],
}


def _lines(key: str, value: Any, indent: int) -> list[str]:
    pad = " " * indent
    if isinstance(value, dict):
        out = [f"{pad}{key}:"]
        for k, v in value.items():
            out += _lines(k, v, indent + 2)
        return out
    if isinstance(value, list):
        out = [f"{pad}{key}:"]
        for item in value:
            out.append(f"{pad}  - " + (", ".join(f"{k}={v}" for k, v in item.items()) if isinstance(item, dict)
                                        else str(item)))
        return out
    return [f"{pad}{key}: {_cell(value)}"]


def _number(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, int | float) else "-"


def eval_table(initial: dict[str, Any], final: dict[str, Any]) -> list[str]:
    """The run's first and latest evaluation side by side, with the change of each metric both have."""
    rows = [["  METRIC", "INITIAL", "FINAL", "CHANGE"]]
    for key in sorted(set(initial) | set(final)):
        a, b = initial.get(key), final.get(key)
        change = f"{b - a:+.4g}" if isinstance(a, int | float) and isinstance(b, int | float) else "-"
        rows.append(["  " + key, _number(a), _number(b), change])
    return _table(rows).splitlines()


def _size(n: Any) -> str:
    if not isinstance(n, int):
        return "?"
    for unit, size in (("GB", 10**9), ("MB", 10**6), ("kB", 10**3)):
        if n >= size:
            return f"{n / size:.1f} {unit}"
    return f"{n} B"


def workers_table(workers: list[dict[str, Any]]) -> list[str]:
    """A split preparation's workers, one row each: stage, committed, documents and bytes read, failure."""
    rows = [["  WORKER", "STAGE", "COMMITTED", "DOCUMENTS", "BYTES", "ERROR"]]
    for w in workers:
        total = w.get("bytesTotal")
        rows.append(["  " + str(w.get("worker", "?")), str(w.get("stage", "")), "yes" if w.get("committed") else "no",
                     str(w.get("documentsRead", 0)),
                     f"{_size(w.get('bytesDone', 0))} / {_size(total) if total is not None else '?'}",
                     str(w.get("error") or "")])
    return _table(rows).splitlines()


def render_describe(record: dict[str, Any]) -> str:
    """Phase, message, counts and conditions of one resource, like `kubectl describe`."""
    st = record.get("status") or {}
    meta = record.get("metadata") or {}
    lines = [f"Name:        {meta.get('name')}", f"Namespace:   {meta.get('namespace')}",
             f"Kind:        {record.get('kind')}", f"Manifest:    {meta.get('manifest', '')}",
             f"Phase:       {st.get('phase') or 'Pending'}", f"Message:     {st.get('message') or ''}", "Status:"]
    for key in DETAIL_FIELDS.get(str(record.get("kind")), []):
        if key == "evalMetrics" and st.get("initialEvalMetrics"):
            lines += ["  evalMetrics (initial: before the first step; final: the latest evaluation):",
                      *eval_table(st["initialEvalMetrics"], st.get("evalMetrics") or {})]
        elif st.get(key) not in (None, {}, []):
            lines += _lines(key, st[key], 2)
    if st.get("workers"):
        lines += ["  workers:" + (f" ({st['workersSummary']})" if st.get("workersSummary") else ""),
                  *workers_table(st["workers"])]
    conds = st.get("conditions") or []
    lines.append("Conditions:")
    if conds:
        rows = [["  TYPE", "STATUS", "REASON", "LAST TRANSITION", "MESSAGE"]]
        rows += [["  " + c.get("type", ""), c.get("status", ""), c.get("reason", ""),
                  c.get("lastTransitionTime", ""), c.get("message", "")] for c in conds]
        lines.append(_table(rows))
    else:
        lines.append("  <none>")
    if record.get("log"):
        lines.append(f"Logs:        {record['log']}")
    return "\n".join(lines)
