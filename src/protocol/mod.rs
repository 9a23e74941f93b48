//! The POP3 wire protocol, free of I/O: command parsing and response encoding.

pub mod command;
pub mod response;

pub use command::{Command, ParseError};
