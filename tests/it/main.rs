//! The one integration-test binary: a real store file, a real server on 127.0.0.1:0.

mod context_golden;
mod store;
