//! The messages actors exchange, apart from the actors' behaviour, split by role:
//!
//! - **requests** (`…Request`): what one actor asks of another. They are counted by the
//!   receiver's bounded [`crate::actors::Mailbox`] and may be refused when it is full or
//!   closed (the refused request comes back to the sender);
//! - **control** (`…Control`): stop, close, sync, hand off, crash injection: never
//!   counted, never refused, sent by supervisors, the router, shutdown and the admin API;
//! - **internal** (`…Internal`): an actor's own follow-ups (store outcomes, timers).
//!
//! Sessions, conversations and the router import these types, never each other: that is
//! what keeps the actors free of import cycles.

pub mod conversation;
pub mod session;
pub mod supervisor;

pub use conversation::{ConversationControl, ConversationInternal, ConversationMsg, ConversationRequest};
pub use session::{ConversationBatch, Delivery, DeviceFrame, SessionControl, SessionMsg, SessionRequest, close_outbox, close_preempts};
pub use supervisor::{ActivateError, ConversationSupervisorMsg};
