"""Report how many inputs each fuzz target ran, in pytest's closing summary."""

from fuzz.targets import COUNTS


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    if any(COUNTS.values()):
        terminalreporter.write_line(
            "fuzz inputs run: " + ", ".join(f"{k} {n}" for k, n in COUNTS.items()))
