"""`djray report OUTPUT`: one self-contained HTML page about a governed output (docs/report.md).

    from djray.report import write_report
    write_report("out/demo")                      # → out/demo/report.html

Statistics are streamed column by column (bounded memory at any output size); at most `samples` kept images and a
couple of examples per reject reason are read and decoded.
"""

from djray.report.build import render_report, write_report
from djray.report.source import Output, ReportError

__all__ = ["Output", "ReportError", "render_report", "write_report"]
