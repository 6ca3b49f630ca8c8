//! Writing a command's output: lines and JSON on stdout (a failed write is
//! [`ClientError::Output`]), hints about more pages on stderr, so that stdout stays what a
//! pipe expects.

use std::fmt;
use std::io::Write;

use serde_json::value::RawValue;

use crate::client::ClientError;

/// Lines of output.
pub trait Output {
    /// Writes one line.
    fn line(&mut self, line: fmt::Arguments<'_>) -> Result<(), ClientError>;
}

impl<W: Write> Output for W {
    fn line(&mut self, line: fmt::Arguments<'_>) -> Result<(), ClientError> {
        writeln!(self, "{line}").map_err(ClientError::Output)
    }
}

/// Writes JSON as the server sent it, on one line.
pub fn write_json(out: &mut impl Write, json: &RawValue) -> Result<(), ClientError> {
    out.line(format_args!("{}", json.get().trim()))
}

/// Tells the user on stderr that there is more than this page, and how to get it.
pub fn more_pages(flag: &str, cursor: &str) {
    eprintln!("(more: {flag} {cursor} for the next page, or --all for every page)");
}
