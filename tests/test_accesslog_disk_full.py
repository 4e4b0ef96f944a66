"""A full disk under the access log is an alarm, not a failed request: the lines are dropped, counted in
`fastgw_log_write_errors_total{log="access", reason="disk_full"}` and reported at most once a second."""

from __future__ import annotations

import errno
import io
import logging

from fastgw import accesslog, metrics
from fastgw.policy.base import RequestContext


class _FullDisk(io.StringIO):
    def write(self, s: str) -> int:
        raise OSError(errno.ENOSPC, "No space left on device")


def test_a_full_disk_counts_and_alarms_without_raising(caplog, monkeypatch) -> None:  # noqa: ANN001
    accesslog.configure("info", "json", _FullDisk())
    # Only our handler (pytest's log capture may have attached its own, which takes the logging path).
    monkeypatch.setattr(logging.getLogger(accesslog.LOGGER_NAME), "handlers", [accesslog._st.handler])
    try:
        with caplog.at_level(logging.ERROR):
            for _ in range(3):
                line = accesslog._encode(RequestContext("r", "GET", "/v1/models", []), "/v1/models", None, None)
                assert line is not None
                accesslog._pending.append(line)
                accesslog.flush()  # never raises
        metrics.flush()
        body = metrics.render()[0].decode()
        line = next(ln for ln in body.splitlines()
                    if ln.startswith('fastgw_log_write_errors_total{log="access",reason="disk_full"}'))
        assert float(line.split()[-1]) >= 3
        assert sum("access log write failed" in r.getMessage() for r in caplog.records) == 1  # once a second
    finally:
        accesslog.configure("info", "json", io.StringIO())
