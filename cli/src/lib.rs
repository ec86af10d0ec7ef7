//! The `mesh` command: install, inject, check, viz, profile and demo.
//!
//! Its commands arrive with the injection, viz and demo work (issues 6 to 8).
