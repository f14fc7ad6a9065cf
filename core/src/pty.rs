//! Interactive terminals in a running sandbox: a program attached to a pseudo-terminal, its input and window size
//! coming in as a stream, its screen bytes going out. The types engines and the service share; the checks that need
//! no backend (a window size in range).

use std::collections::BTreeMap;

use thiserror::Error;

/// The largest window side accepted, in cells: past it a terminal is a mistake, not a screen.
pub const MAX_WINDOW_SIDE: u16 = 1000;

/// A program to run on a terminal in an instance.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PtyRequest {
    /// The program and its arguments (`["/bin/sh"]` by default).
    pub command: Vec<String>,
    /// Added to the container's environment (`TERM` is set to `xterm` unless given).
    pub env: BTreeMap<String, String>,
    /// The working directory (the image's when `None`).
    pub workdir: Option<String>,
    /// `user`, `user:group`, `uid` or `uid:gid` (the image's user when `None`).
    pub user: Option<String>,
    /// Which service of a compose stack runs it (the stack's main service when `None`).
    pub service: Option<String>,
    /// The window's first size.
    pub size: WindowSize,
}

/// A terminal window's size in cells.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct WindowSize {
    pub cols: u16,
    pub rows: u16,
}

impl Default for WindowSize {
    fn default() -> Self {
        Self { cols: 80, rows: 24 }
    }
}

/// A window size outside 1..=[`MAX_WINDOW_SIDE`].
#[derive(Debug, Error, PartialEq, Eq)]
#[error("a terminal window is 1 to {MAX_WINDOW_SIDE} cells a side (got {cols}x{rows})")]
pub struct BadWindow {
    pub cols: u32,
    pub rows: u32,
}

impl WindowSize {
    /// A size in range.
    pub fn new(cols: u32, rows: u32) -> Result<Self, BadWindow> {
        let side = |n: u32| u16::try_from(n).ok().filter(|n| (1..=MAX_WINDOW_SIDE).contains(n));
        match (side(cols), side(rows)) {
            (Some(cols), Some(rows)) => Ok(Self { cols, rows }),
            _ => Err(BadWindow { cols, rows }),
        }
    }
}

/// What goes to a terminal program: typed bytes, or a new window size.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PtyInput {
    Bytes(Vec<u8>),
    Resize(WindowSize),
}

/// What comes from a terminal program: screen bytes (stdout and stderr are one stream on a terminal), or its end
/// (always the last item).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PtyOutput {
    Bytes(Vec<u8>),
    /// It ended, with this exit code (`None` when the engine could not tell).
    Exited(Option<i64>),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn window_sides_are_bounded() {
        assert_eq!(WindowSize::new(120, 40), Ok(WindowSize { cols: 120, rows: 40 }));
        assert!(WindowSize::new(0, 40).is_err());
        assert!(WindowSize::new(80, 1001).is_err());
        assert!(WindowSize::new(70_000, 24).is_err());
    }
}
