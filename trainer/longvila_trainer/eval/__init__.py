"""Evaluation: needle in a haystack over long video with a sequence-parallel prefill.

needle.py builds and scores cases (pure), prefill.py runs the SP prefill, report.py
writes the table and heatmap, niah.py runs the grid and is the CLI. Nothing runs here.
"""
