"""The graph auditor: proves every kernel a compiled graph launches is Triton, or names the op."""
from __future__ import annotations

import logging
import sys

from .collect import collect_reports, install_hooks
from .output_code import audit_output_code, triton_kernel_names
from .report import GraphReport, KernelEntry, TritonOnlyViolation, format_reports, reports_to_json

log = logging.getLogger("tri_inductor.audit")

__all__ = ["GraphReport", "KernelEntry", "TritonOnlyViolation", "audit_output_code", "collect_reports",
           "enforce", "format_reports", "install_hooks", "reports_to_json", "triton_kernel_names"]


def enforce(reports: list[GraphReport], strict: bool, verbose: bool = False) -> None:
    """Strict: raise with the report if any kernel is not Triton. Default: log it and go on."""
    for r in reports:
        if verbose:
            print(r.format_table(), file=sys.stderr)
        if r.ok:
            log.info(r.summary_line())
        elif not strict:
            log.warning("%s\n%s", r.summary_line(), r.format_table())
    if strict and any(not r.ok for r in reports):
        raise TritonOnlyViolation(reports)
