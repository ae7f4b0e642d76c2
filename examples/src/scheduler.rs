//! Scheduler (to come).
