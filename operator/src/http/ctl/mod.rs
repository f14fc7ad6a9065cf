//! The AEnvironment Go controller's own API (`/pods` and `/services`), served so that an AEnvironment api-service
//! pointed at this operator (`--schedule-addr`) works unchanged. Its answers follow the Go controller's wire habits
//! (JSON with a trailing newline, fields in its order, plain-text errors), unlike the SDK-facing routes beside it.

pub(super) mod pods;
pub(super) mod services;
