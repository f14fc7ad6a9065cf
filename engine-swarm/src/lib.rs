//! The aenv [`Engine`](aenv_core::Engine) over Docker Swarm: one service per instance, with one replica and the
//! restart condition `none`, named by the instance id and labelled with the schema of [`aenv_core::labels`].
//!
//! Swarm places the task (by the template's `deployConfig.placement`) and nothing else does: there is no scheduler
//! here. What happens to the task is what the instance reports: a task that fails, is rejected, or is shut down
//! because its node was drained or lost makes the instance `Failed` with Swarm's reason; it is not made again
//! elsewhere. The connection, the host policy, the sandbox defaults and the readiness probe are the Docker
//! engine's (`aenv-engine-docker`).

mod engine;
mod network;
mod spec;
mod stack;
mod warmup;

pub use engine::SwarmEngine;
pub use spec::{Reach, SwarmEngineConfig};
