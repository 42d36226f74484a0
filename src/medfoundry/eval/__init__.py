"""The evaluation harness: benchmark specs, metrics from maintained libraries, bootstrap intervals, reports."""
