//! The `-ERR` text for a line the parser refused, in the session's language, with a hint
//! (under `lab_hints`) where one teaches something.

use crate::i18n::{Key, Texts};
use crate::protocol::ParseError;
use crate::protocol::command::Problem;

/// The text to send after `-ERR ` for `e`.
pub(super) fn error_text(e: ParseError, t: Texts<'_>) -> String {
    let (keyword, problem) = match e {
        ParseError::Unknown => return t.hinted(Key::UnknownCommand, Key::HintUnknownCommand, &[]),
        ParseError::Empty => return t.get(Key::EmptyCommand).to_owned(),
        ParseError::BadArguments { keyword, problem } => (keyword, problem),
    };
    let (key, hint) = match problem {
        Problem::NoArguments => (Key::NoArguments, Some(Key::HintNoArguments)),
        Problem::NeedsPassword => (Key::PassNeedsPassword, None),
        Problem::OneUserName => (Key::UserNeedsName, None),
        Problem::ApopArguments => (Key::ApopArguments, Some(Key::HintApopArguments)),
        Problem::BadMechanism => (Key::BadMechanism, None),
        Problem::BadInitialResponse => (Key::BadInitialResponse, None),
        Problem::AuthArguments => (Key::AuthArguments, None),
        Problem::NeedsMessageNumber => (Key::NeedsMessageNumber, Some(Key::HintNeedsMessageNumber)),
        Problem::InvalidMessageNumber => (Key::InvalidMessageNumber, Some(Key::HintInvalidMessageNumber)),
        Problem::InvalidLineCount => (Key::InvalidLineCount, Some(Key::HintTop)),
        Problem::TopArguments => (Key::TopArguments, Some(Key::HintTop)),
        Problem::TooManyArguments => (Key::TooManyArguments, None),
        Problem::ArgumentTooLong => (Key::ArgumentTooLong, None),
        Problem::LangArguments => (Key::LangArguments, None),
    };
    let args: &[(&str, &dyn std::fmt::Display)] = &[("command", &keyword)];
    match hint {
        Some(hint) => t.hinted(key, hint, args),
        None => t.fill(key, args),
    }
}
