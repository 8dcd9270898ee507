"""The shared core both sides stand on: config schema and loading, the registry of names, the
run-directory contract, status, atomic writes, object storage, SLURM queries, locks and the one
user-error type. TensorFlow-free, and it imports nothing of launcher/ or training/."""
