use thiserror::Error;

/// Input that the core rejects. Every message names what was wrong and how to write it instead.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum Error {
    #[error("invalid duration {input:?}: {reason} (write a Go duration such as \"90s\", \"30m\" or \"1h30m\")")]
    Duration { input: String, reason: &'static str },
    #[error("invalid cpu {input:?}: {reason} (write cores as \"1C\", \"2\", \"0.5\" or millicores as \"500m\")")]
    Cpu { input: String, reason: &'static str },
    #[error(
        "invalid memory {input:?}: {reason} (write \"512Mi\", \"2Gi\", \"2G\", \"512M\" or a plain number of bytes)"
    )]
    Memory { input: String, reason: &'static str },
}
