"""The report as text: one block per part (status, time against budget, each measurement on a line), and
the rows to paste into README's performance table. Pure functions of the JSON report."""

from __future__ import annotations

from typing import Any

HIDDEN = {"traceback"}
"""Keys left out of the text (they are in report.json)."""


def _scalar(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def _lines(key: str, value: Any, depth: int) -> list[str]:
    """A measurement: its scalars on one line, nested measurements indented below it."""
    pad = "  " * depth
    if not isinstance(value, dict):
        return [f"{pad}{key}: {_scalar(value)}"[:200]]
    scalars = [f"{k}={_scalar(v)}" for k, v in value.items() if not isinstance(v, dict) and k not in HIDDEN]
    out = [f"{pad}{key}: {' '.join(scalars)}"[:200]]
    for k, v in value.items():
        if isinstance(v, dict):
            out += _lines(k, v, depth + 1)
    return out


def errors_in(value: Any, path: str = "") -> list[str]:
    """Every failure recorded in (part of) a report, as `path: error`, nested measurements included."""
    if not isinstance(value, dict):
        return []
    found = [f"{path}: {value['error']}"] if "error" in value else []
    for key, inner in value.items():
        found += errors_in(inner, f"{path}.{key}" if path else key)
    return found


def render_text(report: dict[str, Any]) -> str:
    """The short text form of the report."""
    head = (f"gpu-check {report['mode']}, started {report['started']}, wall {report.get('wall_s', '?')} s "
            f"(GPU budgets sum to {report['gpu_budget_total_s']} s, limit {report['gpu_wall_limit_s']} s)")
    lines = [head, ""]
    for name, part in report["parts"].items():
        why = part.get("reason") or part.get("error") or ""
        lines.append(f"{name:15s} {part['status']:8s} {part['seconds']:7.1f} s of {part['budget_s']} s  {why}".rstrip())
        for key, value in part.get("result", {}).items():
            if key not in ("packages",):
                lines += _lines(key, value, 1)
    failures = errors_in(report["parts"])
    if failures:
        lines += ["", "Errors:", *(f"  {f}"[:300] for f in failures)]
    rows = readme_rows(report)
    if rows:
        lines += ["", "README performance rows (paste over the GPU rows):", *rows]
    return "\n".join(lines) + "\n"


def _get(report: dict[str, Any], part: str, *keys: str) -> Any:
    """A measurement of a part that finished, or None."""
    value: Any = report["parts"].get(part, {}).get("result")
    for key in keys:
        if not isinstance(value, dict) or key not in value:
            return None
        value = value[key]
    return value


def _pct(x: Any) -> str:
    return f"{x:.1%}" if isinstance(x, float) else "n/a"


def _variant(v: Any) -> str:
    if not isinstance(v, dict):
        return "n/a"
    if "tokens_per_s" not in v:
        return str(v.get("skipped") or v.get("error") or "n/a")
    return f"{v['tokens_per_s']:,.0f} tok/s, MFU {_pct(v.get('mfu_spec'))}"


def _pretrain_row(report: dict[str, Any], part: str, label: str, device: str) -> str:
    ours = _get(report, part, "ours")
    if not isinstance(ours, dict) or "tokens_per_s" not in ours:
        return f"| `scripts/gpu-check` {label} on one {device} | not measured ({_variant(ours)}) | ≥ 1.0× plain |"
    ratio = _get(report, part, "ratio_ours_over_plain")
    return (f"| `scripts/gpu-check` {label} on one {device} (FSDP2 world 1, bf16 autocast) | **MFU "
            f"{_pct(ours.get('mfu_spec'))} of spec bf16 peak, {_pct(ours.get('mfu_measured'))} of the measured "
            f"matmul peak**, {ours['tokens_per_s']:,.0f} tokens/s, {ours.get('peak_memory_gib')} GiB; "
            f"ours/plain loop {ratio}×; activation checkpointing: {_variant(_get(report, part, 'ours_ac'))}; "
            f"compile: {_variant(_get(report, part, 'ours_compile'))}; both: "
            f"{_variant(_get(report, part, 'ours_ac_compile'))} | ≥ 1.0× plain |")


def readme_rows(report: dict[str, Any]) -> list[str]:
    """README performance-table rows from a GPU run (none from a dry run: CPU figures are not GPU figures)."""
    if report["mode"] != "gpu":
        return []
    device = _get(report, "env", "device", "name") or "GPU"
    rows = [_pretrain_row(report, "pretrain_dense", "pretraining ~1B dense", device),
            _pretrain_row(report, "pretrain_moe", "pretraining a small MoE (8 experts, top-2)", device)]
    sft = {m: _get(report, "sft", m) for m in ("full", "lora", "qlora")}
    cells = [f"{m}: {v['tokens_per_s']:,.0f} tok/s, {v.get('peak_memory_gib')} GiB" if isinstance(v, dict)
             and "tokens_per_s" in v else f"{m}: {_variant(v)}" for m, v in sft.items()]
    rows.append(f"| `scripts/gpu-check` SFT steps of the ~1B model on one {device} | {'; '.join(cells)} | — |")
    roll = {k: _get(report, "rollout", k) for k in ("fp32", "bf16_autocast")}
    cells = [f"{k}: {v['tokens_per_s']:,.0f} tok/s" if isinstance(v, dict) and "tokens_per_s" in v
             else f"{k}: {_variant(v)}" for k, v in roll.items()]
    rows.append(f"| `scripts/gpu-check` GRPO rollout sampling (KV cache) on one {device} | {'; '.join(cells)} | — |")
    cells = []
    for streams in ("1", "16"):
        s = _get(report, "serve", f"streams_{streams}")
        if isinstance(s, dict) and "server" in s and "hf_generate" in s:
            cells.append(f"{streams} stream(s): server {s['server']['tokens_per_s']:,.0f} vs HF "
                         f"{s['hf_generate']['tokens_per_s']:,.0f} tok/s ({s.get('throughput_overhead')}), TTFT "
                         f"{s['server']['ttft_ms']:.0f} vs {s['hf_generate']['ttft_ms']:.0f} ms")
        else:
            cells.append(f"{streams} stream(s): {_variant(s)}")
    rows.append(f"| `scripts/gpu-check` builtin server vs HF `generate` on one {device} | {'; '.join(cells)} "
                f"| ≤ 10% overhead |")
    ckpt = report["parts"].get("checkpoint", {})
    checks = {k: v for k, v in ckpt.get("result", {}).items() if isinstance(v, dict) and "passed" in v}
    passed = [k for k, v in checks.items() if v["passed"]]
    failed = [k for k, v in checks.items() if not v["passed"]]
    cell = f"{len(passed)}/{len(checks)} checks passed" + (f"; failed: {', '.join(failed)}" if failed else "")
    rows.append(f"| `scripts/gpu-check` `wrap_model` + DCP checkpoint round trip, {device} → CPU → {device} "
                f"| {cell if checks else ckpt.get('status', 'not measured')} | all pass |")
    return rows
