//! `mcas-sim`: a fast vLLM-like OpenAI-compatible upstream simulator.
