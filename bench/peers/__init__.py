"""Side-by-side benchmarks of pooly and the pools users would pick instead (make bench-peers)."""
