"""Tables, statistics, plots and the HTML report built from a run's results."""

from saelab.report.summary import print_summary, summary_frame

__all__ = ["print_summary", "summary_frame"]
