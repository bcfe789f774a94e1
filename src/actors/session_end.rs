//! The end of device sessions: one path for every way a session can end.
//!
//! A session ends when its connection closes on this node (the device left, was replaced,
//! revoked, too slow, or the node shuts down or drains) — and, seen from the other nodes
//! of a cluster, when the node holding it is declared dead, restarts before it could be
//! declared dead, or sends a directory snapshot that no longer lists it (the announcement
//! of its end was lost with a broken connection); and, seen from a node that restarts,
//! when its previous run ended holding it (the rebuild of its Redis directory finds it).
//! Whichever way, the same steps follow, on every node that learns of it:
//!
//! - **presence**: if the user has no device left anywhere (in this node's view), their
//!   1:1 peers get `Presence{online: false, last_seen_ms}` — from the node where the
//!   session ended, which knows the peers, to wherever they are; from each node that
//!   learnt of a remote end, to the peers connected to it (looked up in the store);
//! - **last seen** = the last moment the device was known connected (now, for a local
//!   disconnect; the dead or restarted node's last word otherwise), written through the
//!   store, where the later time always wins (several nodes may write it);
//! - **push**: a device that was sent messages it never acknowledged (its delivered cursor
//!   behind the conversation) and has a push token is pushed for them, by exactly one
//!   node: the one where the session ended, or for a remote end the node the cluster
//!   chooses (`Ended::push_duty`: the lowest-named member other than the lost node; a
//!   restarted node for its previous run only when it has no peer).
//!
//! [`plan`] decides (pure, unit-tested); [`disconnected`] and [`remote_ended`] are the
//! thin shells that read the store, write through the writer and deliver through the
//! router. A device that is still (or again) connected — a newer session of the same
//! device, on this node or another — ends nothing.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use ractor::ActorId;

use super::NodeContext;
use super::push::{PushNotification, PushRequest};
use super::router::Router;
use crate::protocol::{self, id_bytes, pb, server_frame};
use crate::store::{ConversationId, ConversationKind, ConversationRecord, DeviceId, StoreError, StoredMessage, UserId, WriteOp, now_ms};

/// How sessions ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ending {
    /// The connection closed on this node.
    Disconnected,
    /// The node holding them was declared dead (the membership's dead rule).
    NodeDead,
    /// The node holding them restarted (a new incarnation) before it was declared dead.
    NodeRestarted,
    /// The node holding them sent a directory snapshot without them: they ended there and
    /// the announcement never arrived. That node recorded last seen itself.
    Vanished,
    /// This node's previous run held them when it ended (found in Redis after a restart).
    PreviousRun,
}

impl Ending {
    /// Label for logs and `switchboard_sessions_ended_total{ending}`.
    pub fn label(self) -> &'static str {
        match self {
            Ending::Disconnected => "disconnected",
            Ending::NodeDead => "node_dead",
            Ending::NodeRestarted => "node_restarted",
            Ending::Vanished => "vanished",
            Ending::PreviousRun => "previous_run",
        }
    }
}

/// Sessions that ended together, as this node learnt of it.
#[derive(Debug, Clone)]
pub struct Ended {
    /// How.
    pub ending: Ending,
    /// Their devices, with their users.
    pub devices: Vec<(UserId, DeviceId)>,
    /// The last moment they are known to have been connected, in ms since the Unix epoch
    /// (0 = unknown: the store's last seen is used, or now).
    pub last_seen_ms: u64,
    /// This node pushes their devices for what they did not acknowledge.
    pub push_duty: bool,
}

/// Who is connected now, in this node's view (local sessions and the replicated directory).
pub trait Connected {
    /// Some device of `user` is connected, here or on another node.
    fn user_connected(&self, user: UserId) -> bool;
    /// This device is connected, here or on another node.
    fn device_connected(&self, user: UserId, device: DeviceId) -> bool;
}

impl Connected for Router {
    fn user_connected(&self, user: UserId) -> bool {
        self.is_online(user)
    }

    fn device_connected(&self, user: UserId, device: DeviceId) -> bool {
        self.is_device_online(user, device)
    }
}

/// One step of the end of sessions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// Record the user's last seen (the store keeps the later time).
    RecordLastSeen {
        /// Whose.
        user: UserId,
        /// ms since the Unix epoch.
        at_ms: u64,
    },
    /// Tell the user's 1:1 peers the user is offline.
    Offline {
        /// Who went offline.
        user: UserId,
        /// Last seen, ms since the Unix epoch (0 = read the store's).
        at_ms: u64,
    },
    /// Push the device for the messages it did not acknowledge.
    PushUnacked {
        /// Owner.
        user: UserId,
        /// The device.
        device: DeviceId,
    },
}

/// The steps for `ended`, given who is connected now. Devices still connected (a newer
/// session) are skipped; a user is offline only once no device of theirs is connected.
/// Steps come per user, last seen before presence, in a stable order.
pub fn plan(ended: &Ended, connected: &dyn Connected) -> Vec<Step> {
    let mut by_user: BTreeMap<UserId, BTreeSet<DeviceId>> = BTreeMap::new();
    for (user, device) in &ended.devices {
        if !connected.device_connected(*user, *device) {
            by_user.entry(*user).or_default().insert(*device);
        }
    }
    let mut steps = Vec::new();
    for (user, devices) in by_user {
        // A vanished session's node recorded its last seen when it ended; the time this
        // node learnt of it would be later than the truth.
        if ended.ending != Ending::Vanished && ended.last_seen_ms > 0 {
            steps.push(Step::RecordLastSeen { user, at_ms: ended.last_seen_ms });
        }
        if !connected.user_connected(user) {
            steps.push(Step::Offline { user, at_ms: ended.last_seen_ms });
        }
        if ended.push_duty {
            steps.extend(devices.into_iter().map(|device| Step::PushUnacked { user, device }));
        }
    }
    steps
}

/// The 1:1 peers of `user` among `records`.
pub fn direct_peers<'a>(user: UserId, records: impl IntoIterator<Item = &'a ConversationRecord>) -> Vec<UserId> {
    let peers: BTreeSet<UserId> =
        records.into_iter().filter(|r| r.kind == ConversationKind::Direct).flat_map(|r| r.members.iter().copied()).filter(|m| *m != user).collect();
    peers.into_iter().collect()
}

/// What a device left unacknowledged in one conversation: how many messages of others,
/// within what `user` may see, follow its delivered cursor, who sent the last of them, and
/// its seq. `messages` are the log after the cursor (oldest first). Events and the user's
/// own messages are not counted (neither is pushed when stored).
pub fn unacknowledged(user: UserId, record: &ConversationRecord, delivered: u64, messages: &[StoredMessage]) -> Option<(u32, UserId, u64)> {
    let (first, last) = record.visible_range(user)?;
    let mut count = 0u32;
    let mut newest = None;
    for m in messages.iter().filter(|m| m.seq > delivered && m.seq >= first && m.seq <= last) {
        if m.event.is_none() && m.sender_user_id != user {
            count += 1;
            newest = Some((m.sender_user_id, m.seq));
        }
    }
    newest.map(|(sender, seq)| (count, sender, seq))
}

/// Messages read per conversation when counting what a device did not acknowledge; the
/// count in its push stops there.
const UNACKED_PAGE: usize = 100;

/// A device that disconnected is given this long to come back before it is pushed for
/// what it did not acknowledge (a reconnection, a replaced connection, a restart of its
/// node): most come back, and then nothing is read from the store for them.
const RECONNECT_GRACE: Duration = Duration::from_secs(1);

/// Store lookups of remote ends run this many at a time.
const CONCURRENCY: usize = 8;

/// A session of this node ended (its `post_stop`): `session` is its actor, `convs` what it
/// knew of its conversations — the record, the device's delivered cursor, and the highest
/// seq put in its outbox. Unregisters it from the router, then runs the end-of-session
/// steps. Never waits: store work runs in a task.
pub fn disconnected<'a>(
    ctx: &NodeContext,
    user: UserId,
    device: DeviceId,
    session: ActorId,
    convs: impl Iterator<Item = (&'a Arc<ConversationRecord>, u64, u64)>,
) {
    ctx.router.unregister_session(user, device, session);
    let ended = Ended { ending: Ending::Disconnected, devices: vec![(user, device)], last_seen_ms: now_ms(), push_duty: true };
    let steps = plan(&ended, &ctx.router);
    if steps.is_empty() {
        return;
    }
    let mut records = Vec::new();
    // Conversations where the device was sent more than it acknowledged (or sent messages
    // itself: told apart in the store, and only if it stays away).
    let mut gaps = Vec::new();
    for (record, delivered, pushed) in convs {
        records.push(&**record);
        if pushed > delivered {
            // The session's shared record (a group's is tens of KB): not a copy of it.
            gaps.push((Arc::clone(record), delivered));
        }
    }
    let peers = direct_peers(user, records);
    count(ended.ending);
    for step in steps {
        match step {
            Step::RecordLastSeen { user, at_ms } => ctx.writer.write_detached(vec![WriteOp::LastSeen { user_id: user, at_ms }], "last seen"),
            Step::Offline { user, at_ms } if !peers.is_empty() => {
                let (ctx, peers) = (ctx.clone(), peers.clone());
                tokio::spawn(async move {
                    if let Err(e) = tell_offline(&ctx, user, &peers, at_ms, false).await {
                        tracing::warn!(%user, error = %e, "privacy unreadable; offline presence not told");
                    }
                });
            }
            Step::Offline { .. } => {}
            Step::PushUnacked { user, device } if !gaps.is_empty() => {
                let ctx = ctx.clone();
                let gaps = std::mem::take(&mut gaps);
                tokio::spawn(async move {
                    tokio::time::sleep(RECONNECT_GRACE).await;
                    if let Err(e) = push_unacked(&ctx, user, device, Some(gaps)).await {
                        tracing::warn!(%user, %device, error = %e, "could not check unacknowledged messages for a push");
                    }
                });
            }
            Step::PushUnacked { .. } => {}
        }
    }
}

/// Sessions of another node ended (it died, restarted, or its snapshot no longer lists
/// them): runs the steps in a task, store lookups a few at a time.
pub fn remote_ended(ctx: &NodeContext, ended: Ended) {
    if ended.devices.is_empty() {
        return;
    }
    let ctx = ctx.clone();
    tokio::spawn(async move {
        let steps = plan(&ended, &ctx.router);
        count(ended.ending);
        let (mut offline, mut pushed) = (0usize, 0usize);
        let results: Vec<Result<(bool, usize), StoreError>> = futures_util::stream::iter(steps)
            .map(|step| {
                let ctx = ctx.clone();
                async move {
                    match step {
                        Step::RecordLastSeen { user, at_ms } => {
                            ctx.writer.write_detached(vec![WriteOp::LastSeen { user_id: user, at_ms }], "last seen");
                            Ok((false, 0))
                        }
                        Step::Offline { user, at_ms } => tell_local_peers(&ctx, user, at_ms).await.map(|_| (true, 0)),
                        Step::PushUnacked { user, device } => push_unacked(&ctx, user, device, None).await.map(|n| (false, n)),
                    }
                }
            })
            .buffer_unordered(CONCURRENCY)
            .collect()
            .await;
        let mut failures = 0;
        for result in results {
            match result {
                Ok((was_offline, n)) => {
                    offline += usize::from(was_offline);
                    pushed += n;
                }
                Err(e) => {
                    failures += 1;
                    tracing::warn!(error = %e, "end of a remote session: store lookup failed");
                }
            }
        }
        tracing::info!(
            ending = ended.ending.label(),
            devices = ended.devices.len(),
            offline_users = offline,
            pushes = pushed,
            failures,
            last_seen_ms = ended.last_seen_ms,
            "sessions of another node ended"
        );
    });
}

fn count(ending: Ending) {
    metrics::counter!("switchboard_sessions_ended_total", "ending" => ending.label()).increment(1);
}

fn offline_frame(user: UserId, last_seen_ms: u64) -> bytes::Bytes {
    protocol::encode_server(&protocol::server(server_frame::Kind::Presence(pb::Presence {
        user_id: id_bytes(user),
        online: false,
        last_seen_ms,
        request_id: 0,
    })))
}

/// Tells the 1:1 peers of `user` connected to this node that `user` is offline. The last
/// seen is the later of `at_ms` and the store's (another node may know a later moment).
async fn tell_local_peers(ctx: &NodeContext, user: UserId, at_ms: u64) -> Result<(), StoreError> {
    if ctx.router.session_count() == 0 {
        return Ok(());
    }
    let mut peers = Vec::new();
    for id in ctx.store.conversations_of(user).await? {
        if let Some(record) = ctx.store.conversation(id).await?
            && record.kind == ConversationKind::Direct
        {
            peers.extend(record.members.into_iter().filter(|m| *m != user && ctx.router.is_online_here(*m)));
        }
    }
    if peers.is_empty() {
        return Ok(());
    }
    let stored = ctx.store.last_seen(user).await?.unwrap_or(0);
    let at_ms = match stored.max(at_ms) {
        0 => now_ms(),
        t => t,
    };
    tell_offline(ctx, user, &peers, at_ms, true).await
}

/// Tells `peers` that `user` went offline at `at_ms`, as each may see it under the user's
/// privacy settings and blocks (`cores::privacy`): with the last-seen time, with none
/// (0), or nothing at all. `here_only`: to the peers' sessions on this node only.
async fn tell_offline(ctx: &NodeContext, user: UserId, peers: &[UserId], at_ms: u64, here_only: bool) -> Result<(), StoreError> {
    let views = crate::privacy::presence_views(ctx.store.as_ref(), user, peers).await?;
    if ctx.router.is_online(user) {
        // Back already (a quick reconnect, whose "online" may have gone out while this
        // looked up the audience): a late "offline" would contradict it.
        return Ok(());
    }
    let (mut with_time, mut without) = (Vec::new(), Vec::new());
    for (peer, view) in views {
        match crate::cores::privacy::shown_presence(view, false, at_ms) {
            _ if !view.online && !view.last_seen => {}
            (_, 0) => without.push(peer),
            _ => with_time.push(peer),
        }
    }
    for (to, seen) in [(with_time, at_ms), (without, 0)] {
        if to.is_empty() {
            continue;
        }
        let frame = offline_frame(user, seen);
        let make = || super::messages::SessionRequest::Push(frame.clone());
        if here_only { ctx.router.deliver_here(&to, None, make) } else { ctx.router.deliver_to_users(&to, None, make) }
    }
    Ok(())
}

/// Pushes `device` once per conversation where it left messages unacknowledged, if it has
/// a push token and is still not connected. `gaps` narrows the conversations to look at
/// (record and delivered cursor, from its session); None = every conversation of the user,
/// with the cursors from the store. Returns how many notifications were queued.
async fn push_unacked(
    ctx: &NodeContext,
    user: UserId,
    device: DeviceId,
    gaps: Option<Vec<(Arc<ConversationRecord>, u64)>>,
) -> Result<usize, StoreError> {
    if ctx.router.is_device_online(user, device) {
        return Ok(0);
    }
    let Some((_, token)) = ctx.store.push_tokens_of(user).await?.into_iter().find(|(d, _)| *d == device) else { return Ok(0) };
    let gaps = match gaps {
        Some(gaps) => gaps,
        None => {
            let cursors: HashMap<ConversationId, u64> = ctx.store.cursors_of(device).await?.into_iter().map(|(id, c)| (id, c.delivered)).collect();
            let mut gaps = Vec::new();
            for id in ctx.store.conversations_of(user).await? {
                let delivered = cursors.get(&id).copied().unwrap_or(0);
                if ctx.store.last_seq(id).await? > delivered
                    && let Some(record) = ctx.store.conversation_shared(id).await?
                {
                    gaps.push((record, delivered));
                }
            }
            gaps
        }
    };
    let mut queued = 0;
    for (record, delivered) in gaps {
        let Some((first, _)) = record.visible_range(user) else { continue };
        let after = delivered.max(first.saturating_sub(1));
        let messages = ctx.store.messages_after(record.conversation_id, after, UNACKED_PAGE).await?;
        if let Some((count, sender, up_to_seq)) = unacknowledged(user, &record, delivered, &messages) {
            let notification = PushNotification {
                user_id: user,
                device_id: device,
                platform: token.platform.clone(),
                token: token.token.clone(),
                conversation_id: record.conversation_id,
                sender_user_id: sender,
                count,
                silent: false,
                up_to_seq,
            };
            if ctx.push.send(PushRequest::Notify(Box::new(notification))).is_err() {
                metrics::counter!("switchboard_push_dropped_total").increment(1);
            } else {
                queued += 1;
            }
        }
    }
    Ok(queued)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{ContentKind, GroupState};

    /// Who is connected, for the tests: users and devices listed.
    #[derive(Default)]
    struct View {
        users: Vec<UserId>,
        devices: Vec<DeviceId>,
    }

    impl Connected for View {
        fn user_connected(&self, user: UserId) -> bool {
            self.users.contains(&user)
        }

        fn device_connected(&self, _user: UserId, device: DeviceId) -> bool {
            self.devices.contains(&device)
        }
    }

    fn ended(ending: Ending, devices: Vec<(UserId, DeviceId)>, push_duty: bool) -> Ended {
        Ended { ending, devices, last_seen_ms: 1_000, push_duty }
    }

    #[test]
    fn a_user_whose_last_device_ended_goes_offline_with_last_seen_recorded_and_the_device_pushed() {
        let (u, d) = (UserId::random(), DeviceId::random());
        let steps = plan(&ended(Ending::Disconnected, vec![(u, d)], true), &View::default());
        assert_eq!(
            steps,
            vec![Step::RecordLastSeen { user: u, at_ms: 1_000 }, Step::Offline { user: u, at_ms: 1_000 }, Step::PushUnacked { user: u, device: d }]
        );
    }

    #[test]
    fn a_user_with_another_device_connected_stays_online_but_last_seen_is_still_recorded() {
        let (u, d) = (UserId::random(), DeviceId::random());
        let view = View { users: vec![u], devices: vec![] };
        let steps = plan(&ended(Ending::NodeDead, vec![(u, d)], false), &view);
        assert_eq!(steps, vec![Step::RecordLastSeen { user: u, at_ms: 1_000 }]);
    }

    #[test]
    fn a_device_connected_again_ends_nothing() {
        // Replaced by a newer session here, or reconnected to another node before its old
        // node was declared dead.
        let (u, d) = (UserId::random(), DeviceId::random());
        let view = View { users: vec![u], devices: vec![d] };
        assert!(plan(&ended(Ending::NodeDead, vec![(u, d)], true), &view).is_empty());
        assert!(plan(&ended(Ending::Disconnected, vec![(u, d)], true), &view).is_empty());
    }

    #[test]
    fn only_the_node_with_the_push_duty_pushes_and_every_node_tells_its_peers() {
        let u = UserId::random();
        let (d1, d2) = (DeviceId::random(), DeviceId::random());
        let devices = vec![(u, d1), (u, d2)];
        let duty = plan(&ended(Ending::NodeDead, devices.clone(), true), &View::default());
        let other = plan(&ended(Ending::NodeDead, devices, false), &View::default());
        let pushes = |steps: &[Step]| steps.iter().filter(|s| matches!(s, Step::PushUnacked { .. })).count();
        assert_eq!((pushes(&duty), pushes(&other)), (2, 0));
        // One presence change per user, however many of their devices ended.
        for steps in [&duty, &other] {
            assert_eq!(steps.iter().filter(|s| matches!(s, Step::Offline { .. })).count(), 1);
        }
    }

    #[test]
    fn a_vanished_session_records_nothing_its_node_did_that() {
        let (u, d) = (UserId::random(), DeviceId::random());
        let e = Ended { ending: Ending::Vanished, devices: vec![(u, d)], last_seen_ms: 0, push_duty: false };
        assert_eq!(plan(&e, &View::default()), vec![Step::Offline { user: u, at_ms: 0 }]);
    }

    fn record(kind: ConversationKind, mut members: Vec<UserId>, group: Option<GroupState>) -> ConversationRecord {
        members.sort();
        ConversationRecord { conversation_id: ConversationId::random(), kind, members, created_ms: 0, group: group.map(Box::new), retention_secs: 0 }
    }

    fn message(seq: u64, sender: UserId, event: bool) -> StoredMessage {
        StoredMessage {
            conversation_id: ConversationId::nil(),
            seq,
            sender_user_id: sender,
            sender_device_id: DeviceId::random(),
            client_msg_id: format!("m{seq}"),
            server_time_ms: seq,
            payload: bytes::Bytes::new(),
            event: event.then(bytes::Bytes::new),
            kind: ContentKind::Normal,
            reference_seq: 0,
            deleted: false,
            attachments: Vec::new(),
        }
    }

    #[test]
    fn only_messages_of_others_after_the_cursor_count_as_unacknowledged() {
        let (me, peer) = (UserId::random(), UserId::random());
        let direct = record(ConversationKind::Direct, vec![me, peer], None);
        let log = [message(3, peer, false), message(4, me, false), message(5, peer, false), message(6, me, false)];
        assert_eq!(unacknowledged(me, &direct, 2, &log), Some((2, peer, 5)));
        assert_eq!(unacknowledged(me, &direct, 5, &log), None, "only my own message is left");
        assert_eq!(direct_peers(me, [&direct]), vec![peer]);
    }

    #[test]
    fn group_events_and_messages_outside_membership_do_not_count() {
        let (me, peer) = (UserId::random(), UserId::random());
        let group = GroupState { joined: vec![(me, 4), (peer, 1)], ..Default::default() };
        let g = record(ConversationKind::Group, vec![me, peer], Some(group));
        let log = [message(2, peer, false), message(4, peer, true), message(5, peer, false)];
        assert_eq!(unacknowledged(me, &g, 0, &log), Some((1, peer, 5)));
        assert!(direct_peers(me, [&g]).is_empty(), "group members are not 1:1 peers");
    }
}
