//! The lab: every namespace, link, address and process a run creates, and their teardown.
//! Only this module (and the driver above it) touches namespaces.

pub mod error;
pub mod names;
pub mod net;
pub mod netns;
pub mod topology;

pub use error::LabError;
pub use netns::{Namespace, RuntimeFlavor};
