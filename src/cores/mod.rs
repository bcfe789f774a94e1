//! Pure cores: the decisions of the message path as state machines that take events and
//! return actions. Nothing here does I/O: no store handle, no router, no clock (times
//! are passed in), no runtime, no sockets. The actors in `crate::actors` are the shells
//! that feed these cores and carry their actions out; the cores are unit- and
//! property-tested on their own (see each module's tests).
//!
//! - [`sequencer`]: one conversation's log: seqs, idempotency, pipelined batches, the
//!   rules for edits, reactions, deletes and group changes, receipts.
//! - [`delivery`]: one device's view: per-conversation watermarks, gap filling,
//!   catch-up paging, cursor moves, the slow-consumer decision.
//! - [`group`]: who may change what in a group, and the resulting record and event.
//! - [`keys`]: the key directory's checks: sizes, limits, Ed25519 signatures, low keys.
//! - [`megolm_rotation`]: the client SDK's rule for replacing a conversation's outbound
//!   Megolm session and for whom to give its key.
//! - [`to_device`]: to-device sends (checks, queue bound) and a receiving device's queue
//!   position (in order, once); not wired to frames yet.
//! - [`recent_ids`], [`receipts`]: the sequencer's dedup window and group receipt counts.
//! - [`privacy`]: privacy settings and blocking: who sees presence, who may add whom to
//!   groups, whether read receipts, typing and sends flow between two users.
//! - [`inbox`]: a user's conversation list: per-user state (mute, archive, pin, clear),
//!   what changed since a version, its order and pages, unread counts.
//! - [`status`]: Status posts (24 hours): what a post may hold, who may see it (mutual
//!   contacts, allow and deny lists, blocks), whose views count, the feed's order and pages.
//! - [`token_bucket`]: a rate budget kept in the store and shared by every node.
//! - [`requests`]: what a device asks of a conversation (the sequencer's inputs).
//! - [`write_batch`]: the store writer's group commit: which queued writes form the next
//!   batch, and how long a write nobody waits for may wait to ride in one.

pub mod delivery;
pub mod group;
pub mod inbox;
pub mod keys;
pub mod megolm_rotation;
pub mod privacy;
pub mod receipts;
pub mod recent_ids;
pub mod requests;
pub mod sequencer;
pub mod status;
pub mod to_device;
pub mod token_bucket;
pub mod write_batch;
