//! `mcas-telegram`: the Telegram channel runner.
