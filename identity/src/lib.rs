//! The mesh certificate authority: issues short-lived leaf certificates to proxies from
//! CSRs, authenticating them by service-account token.
//!
//! Its contents arrive with the identity work (issue 3).
