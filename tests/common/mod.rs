//! Test harness: spawns built binaries on free ports, polls for readiness, cleans up on drop.
