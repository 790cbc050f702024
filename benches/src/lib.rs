//! Criterion benches for Starling live in `benches/`; this library is empty.
