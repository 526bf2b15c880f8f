"""pgha's benchmark harness: `python -m bench` (root, on the lab, ~30 minutes).

Every figure is a ratio of something pgha does to a floor measured in the same run; see
bench/README.md for what B1..B7 measure and their goals.
"""
