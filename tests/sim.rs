//! mcas-sim on its own.
