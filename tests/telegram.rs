//! mcas-telegram against a fake Bot API and a gateway in front of mcas-sim.
